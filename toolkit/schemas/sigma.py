"""Tables of Sigma rule runs (toolkit/correlate/sigma/, ``snapscope sigma``)."""

from toolkit.schemas.core import INT, STRING, declare

declare(
    "sigma/matches",
    {
        "sigma_id": STRING,  # the Sigma rule's id (its file and title when it has none)
        "title": STRING,
        "severity": STRING,  # the rule's level: info | low | medium | high | critical
        "attack_id": STRING,  # ATT&CK techniques of the rule's tags, comma-joined (T1105,T1059.004)
        "tags": STRING,  # every tag of the rule, comma-joined
        "rule_path": STRING,  # the rule file
        "kind": STRING,  # event (one row matched) | correlation (a Sigma correlation rule joined events)
        "view": STRING,  # the log-source view the row was read through: process_creation, dns, ...
        "table": STRING,  # the matched row (a correlation: its last event) ...
        "row": INT,  # ... by position in that snapshot's table
        "pid": INT,
        "path": STRING,  # the executable of a process or command row
        "flow_id": STRING,
        "description": STRING,  # the matched text: command line, log message, connection
        "evidence": STRING,  # JSON list of {table, snapshot_id, row}: every row the match rests on
    },
    doc="Rows of a case's tables that Sigma rules matched (snapscope sigma), each linked to its rows.",
)
