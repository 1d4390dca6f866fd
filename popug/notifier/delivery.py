"""Turning an outbox row into an email, and handing it over: maildir or SMTP.

Both are blocking (file system, smtplib) and run in a worker thread; every
SMTP operation has a timeout, so a silent server costs a retry, never the
IOLoop.
"""

import email.policy
import email.utils
import os
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path


def build_message(row, from_address, domain):
    # Plain 7-bit headers (RFC 2047 encoded words) and a UTF-8 body: every
    # server and mail reader takes these, SMTPUTF8 or not.
    msg = EmailMessage(policy=email.policy.default)
    # A header is one line: a title with a newline must not add headers.
    msg["Subject"] = " ".join(row.subject.split())
    msg["From"] = from_address
    msg["To"] = row.recipient
    msg["Date"] = email.utils.format_datetime(row.created_at)
    msg["Message-ID"] = f"<outbox-{row.id}@{domain}>"
    msg["X-Popug-Kind"] = row.kind
    msg.set_content(row.body, charset="utf-8")
    return msg


class AmbiguousDelivery(Exception):
    """The message went out but the server never confirmed it: it may have it already."""


class MaildirTransport:
    """Deliver into <data_dir>/mail/{tmp,new,cur}: one RFC 5322 file per message.

    The file is named after the outbox row, written in tmp/ and renamed into
    new/ (atomic): delivering a row twice finds it there and writes nothing.
    """

    resend_interrupted = True

    def __init__(self, folder):
        self.folder = Path(folder)
        for sub in ("tmp", "new", "cur"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)

    def name(self, row):
        return f"{int(row.created_at.timestamp())}.popug-{row.id}.eml"

    def already_delivered(self, name):
        if (self.folder / "new" / name).exists():
            return True
        # A mail reader moves read messages to cur/ and appends flags.
        return any(p.name.startswith(name) for p in (self.folder / "cur").iterdir())

    def send(self, msg, row):
        name = self.name(row)
        if self.already_delivered(name):
            return
        tmp = self.folder / "tmp" / name
        with open(tmp, "wb") as f:
            f.write(msg.as_bytes(policy=email.policy.default))
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.folder / "new" / name)


class SmtpTransport:
    """Hand the message to an SMTP server (STARTTLS and login when configured)."""

    resend_interrupted = False

    def __init__(self, settings):
        self.settings = settings

    def send(self, msg, row):
        s = self.settings
        with smtplib.SMTP(s.host, s.port, timeout=s.timeout_s) as smtp:
            smtp.ehlo()
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if s.username:
                smtp.login(s.username, s.password or "")
            sender = email.utils.parseaddr(msg["From"])[1]
            code, reply = smtp.mail(sender)
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, sender)
            code, reply = smtp.rcpt(row.recipient)
            if code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({row.recipient: (code, reply)})
            try:
                code, reply = smtp.data(msg.as_bytes(policy=email.policy.SMTP))
            except (OSError, smtplib.SMTPServerDisconnected) as e:
                # The whole message was sent (or part of it) and no answer came:
                # retrying could deliver it twice, which must never happen.
                raise AmbiguousDelivery(
                    f"the server did not confirm the message ({type(e).__name__}: {e}); "
                    "not retried, so that it can never arrive twice"
                ) from e
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)


def make_transport(config):
    if config.notifier.transport == "smtp":
        return SmtpTransport(config.notifier.smtp)
    return MaildirTransport(Path(config.data_dir) / "mail")
