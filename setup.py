from setuptools import find_packages, setup

setup(
    name="uberpopug",
    version="0.1.0",
    description="UberPopug task system: tracker, accounting, analytics, auth with SSO",
    python_requires=">=3.11",
    packages=find_packages(include=["popug", "popug.*"]),
    include_package_data=True,
    package_data={"popug": ["*/templates/*.html", "common/static/*"]},
    install_requires=[
        "tornado>=6.4",
        "aiopg>=1.4",
        "psycopg2-binary>=2.9.9",
        "bcrypt>=4.1",
        "PyYAML>=6.0.1",
        # The IANA time zones for the business day (accounting.timezone) on
        # machines without a system zone database (slim containers, Windows).
        "tzdata>=2024.1",
        # /metrics in the Prometheus text format, with its histogram buckets and
        # escaping exactly as Prometheus parses them.
        "prometheus-client>=0.20",
        # Bundles PostgreSQL server binaries: the default embedded database on a
        # machine with no PostgreSQL installed.
        "pgserver>=0.1.4",
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-tornado>=0.8.1",
            # pytest-tornado imports pkg_resources, which setuptools 81 removed.
            "setuptools<81",
            "selenium>=4.20",
            # a real SMTP server for the notifier tests
            "aiosmtpd>=1.4",
            "ruff>=0.5",
        ],
    },
    entry_points={"console_scripts": ["popug=popug.cli:main"]},
)
