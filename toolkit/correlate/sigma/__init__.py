"""Sigma rules over a case's tables.

Sigma rules are written against log sources (``process_creation``,
``network_connection``, ``dns``, Linux ``auth``/``syslog``...). Here each log
source is a *view*: a frame built from one snapshot's tables with snapscope's
own column names (``views``). A pySigma processing pipeline per view maps the
rule's Sigma field names to those columns (``taxonomy``), the DuckDB backend
turns the rule into SQL (``backend``), and ``run`` executes it over the views,
evaluates Sigma correlation rules over the matched events, and returns rows
of the ``sigma/matches`` table. The correlation rule ``sigma.match``
(toolkit/correlate/rules.py) turns those rows into findings.

Nothing is imported here: the correlation rule (``findings``) runs on every
analysis and must not load pySigma.

Example::

    from toolkit.correlate.sigma.load import load_rules
    from toolkit.correlate.sigma.run import compile_rules, run_rules

    matches, problems = run_rules(compile_rules(load_rules([Path("rules/sigma")])), tables, "lab-qemu")
"""
