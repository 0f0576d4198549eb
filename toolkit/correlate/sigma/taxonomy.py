"""Which of our views answers a Sigma log source, and how Sigma's field names map to its columns.

:data:`VIEWS` is the registry (a test walks it): per view, the log sources it
serves, the Sigma fields it knows (Sigma name -> our column) and what it is
built from. :func:`view_pipeline` turns one entry into a pySigma processing
pipeline: a detection on a field the view does not have fails the rule's
conversion (it becomes a diagnostic, never a silent non-match), known fields
are renamed to our columns, and the view's name is left in the pipeline state
for the backend's ``FROM``.

Example::

    view_for(SigmaLogSource("process_creation", "linux"))   # -> "process_creation"
    view_pipeline("process_creation")                       # -> ProcessingPipeline
"""

from __future__ import annotations

from dataclasses import dataclass

from sigma.exceptions import SigmaTransformationError
from sigma.processing.conditions import ExcludeFieldCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations import FieldMappingTransformation, SetStateTransformation
from sigma.processing.transformations.base import DetectionItemTransformation

_PROCESS_FIELDS = {
    "Image": "exe_path",
    "CommandLine": "args",
    "ParentImage": "parent_exe_path",
    "ParentCommandLine": "parent_args",
    "User": "user",
    "ProcessId": "pid",
    "ParentProcessId": "ppid",
}

# view -> the log sources it serves ((category, product, service); None = any), Sigma field -> column
VIEWS: dict[str, dict] = {
    "process_creation": {
        "logsources": [("process_creation", "linux", None)],
        "fields": _PROCESS_FIELDS,
        "doc": "Processes in memory (with their command lines, parents and users) and shell history "
        "commands (the command as CommandLine, its program resolved on the guest's PATH as Image).",
    },
    "file_event": {
        "logsources": [("file_event", "linux", None)],
        "fields": {"TargetFilename": "target_path", "Image": "exe_path", "CommandLine": "args", "User": "user"},
        "doc": "Files that shell history commands wrote: a downloader's output file (-O, -o) or a redirection.",
    },
    "network_connection": {
        "logsources": [("network_connection", "linux", None)],
        "fields": {
            "Image": "exe_path",
            "User": "user",
            "ProcessId": "pid",
            "Initiated": "initiated",
            "Protocol": "proto",
            "SourceIp": "src_ip",
            "SourcePort": "src_port",
            "DestinationIp": "dst_ip",
            "DestinationPort": "dst_port",
            "DestinationHostname": "dst_hostname",
        },
        "doc": "Connected sockets in memory (with their process) and capture flows no socket explains.",
    },
    "dns": {
        "logsources": [("dns", None, None)],
        "fields": {
            "query": "qname",
            "answer": "answer",
            "record_type": "record_type",
            "QueryName": "qname",
            "QueryResults": "answer",
            "src_ip": "src_ip",
            "dst_ip": "dst_ip",
        },
        "doc": "DNS queries and answers from the capture.",
    },
    "linux_auth": {
        "logsources": [(None, "linux", "auth")],
        "fields": {"service": "service", "pid": "pid"},
        "doc": "auth.log / secure lines (keywords match the message).",
    },
    "linux_log": {
        "logsources": [(None, "linux", None), (None, "linux", "syslog")],
        "fields": {"service": "service", "pid": "pid"},
        "doc": "Every log line on the disk: syslog, messages, auth, the journal (keywords match the message).",
    },
}
# One view per service whose lines a Sigma rule may ask for by ``service:`` (the log's program name).
SERVICE_VIEWS = {"sshd": ("sshd",), "sudo": ("sudo",), "cron": ("cron", "CRON", "crond"), "su": ("su",)}
for _service, _names in SERVICE_VIEWS.items():
    VIEWS[f"linux_{_service}"] = {
        "logsources": [(None, "linux", _service)],
        "fields": {"pid": "pid"},
        "doc": f"Log lines of {'/'.join(_names)} from every log on the disk (keywords match the message).",
        "services": _names,
    }


def view_for(logsource) -> str | None:
    """The view serving a rule's log source (a ``SigmaLogSource``), or None when no table of ours does.

    Log sources match exactly: a ``product: zeek, category: dns`` rule expects Zeek's field names, a
    ``service: auditd`` rule audit records; neither is read from views built for something else.
    """
    have = (logsource.category, logsource.product, logsource.service)
    return next((name for name, view in VIEWS.items() if have in view["logsources"]), None)


@dataclass
class UnknownFieldFailure(DetectionItemTransformation):
    """Fails the conversion of a rule naming a field the view does not have: a rule must not
    silently match nothing because our tables lack what it asks about."""

    view: str

    def apply_detection_item(self, detection_item) -> None:
        if detection_item.field is None:  # keywords: matched against the row's text
            return
        raise SigmaTransformationError(
            f"field {detection_item.field!r} is not in snapscope's {self.view} view "
            f"(it has {', '.join(sorted(VIEWS[self.view]['fields']))})",
            source=detection_item.source,
        )


def view_pipeline(view: str) -> ProcessingPipeline:
    """The processing pipeline for rules read over ``view``: refuse unknown fields, rename known ones,
    name the view for the backend."""
    fields = VIEWS[view]["fields"]
    return ProcessingPipeline(
        name=f"snapscope {view}",
        priority=20,
        items=[
            ProcessingItem(
                identifier="snapscope_unknown_field",
                transformation=UnknownFieldFailure(view),
                field_name_conditions=[ExcludeFieldCondition(fields=list(fields))],
            ),
            ProcessingItem(identifier="snapscope_fields", transformation=FieldMappingTransformation(dict(fields))),
            ProcessingItem(identifier="snapscope_view", transformation=SetStateTransformation("view", view)),
        ],
    )
