"""Service 1, tracker: tasks are created, shuffled among popugs, and completed."""

from tornado.web import url

from popug.tracker import handlers as h


def routes(config):
    return [
        url(r"/", h.HomeHandler, name="tracker.home"),
        url(r"/tasks", h.TasksHandler, name="tracker.tasks"),
        url(r"/tasks/new", h.TaskNewHandler, name="tracker.task_new"),
        url(r"/tasks/shuffle", h.TaskShuffleHandler, name="tracker.shuffle"),
        url(r"/tasks/([^/]+)/complete", h.TaskCompleteHandler, name="tracker.task_complete"),
        url(r"/api/v1/tasks", h.TasksApiHandler, name="tracker.api.tasks"),
        url(r"/api/v1/tasks/shuffle", h.TaskShuffleApiHandler, name="tracker.api.shuffle"),
        url(r"/api/v1/tasks/([^/]+)", h.TaskApiHandler, name="tracker.api.task"),
        url(
            r"/api/v1/tasks/([^/]+)/complete",
            h.TaskCompleteApiHandler,
            name="tracker.api.task_complete",
        ),
    ]
