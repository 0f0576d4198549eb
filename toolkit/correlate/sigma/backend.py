"""pySigma's DuckDB backend, made exact for our views.

The published backend targets JSON logs; four of its choices would make a
rule match what it should not (or miss what it should) over our frames:

- strings compare case-sensitively with ``=`` and its ``ILIKE`` patterns have
  no escape, so ``rcu_`` would match ``rcuX``: every string match here is one
  ``ILIKE ... ESCAPE '\\'`` (Sigma strings are case-insensitive) with ``%``,
  ``_`` and ``\\`` escaped;
- regular expressions are quoted without doubling ``'``: here they are SQL
  strings, with Sigma's ``i``/``m``/``s`` flags as RE2 inline flags;
- keywords (value-only detections) are refused: here they search ``_raw``,
  the row's text (a log message, a command line);
- the query reads a table named ``logs``: here it reads the view the
  processing pipeline named, and returns the matched rows' origin.

Example::

    backend = CaseBackend(view_pipeline("process_creation"))
    backend.convert_rule(rule)   # -> ['SELECT ... FROM "process_creation" WHERE ...']
"""

from __future__ import annotations

from sigma.conditions import ConditionFieldEqualsValueExpression
from sigma.types import SigmaRegularExpressionFlag, SigmaString, SpecialChars
from sigma_backend_duckdb import DuckDBBackend

ESCAPE = "\\"
RE2_FLAGS = {
    SigmaRegularExpressionFlag.IGNORECASE: "i",
    SigmaRegularExpressionFlag.MULTILINE: "m",
    SigmaRegularExpressionFlag.DOTALL: "s",
}


def sql_string(text: str) -> str:
    """A SQL string literal: ``it's`` -> ``'it''s'``."""
    return "'" + str(text).replace("'", "''") + "'"


class CaseBackend(DuckDBBackend):
    """DuckDB SQL over one of our Sigma views (see the module doc for what differs from the parent)."""

    name = "snapscope case views (DuckDB)"
    # The rules of a correlation run on their own here (their events are joined in Python): whole queries.
    finalize_correlation_subqueries = True

    def _text(self, field: str) -> str:
        # Numbers (pids, ports) are matched as text too: a Sigma string '8443' means the port 8443.
        return f"CAST({self.escape_and_quote_field(field)} AS VARCHAR)"

    def _like(self, value: SigmaString) -> str:
        pattern = value.convert(escape_char=ESCAPE, wildcard_multi="%", wildcard_single="_", add_escaped=ESCAPE)
        return f"{sql_string(pattern)} ESCAPE {sql_string(ESCAPE)}"

    def convert_condition_field_eq_val_str(self, cond, state):
        return f"{self._text(cond.field)} ILIKE {self._like(cond.value)}"

    def convert_condition_field_eq_val_str_case_sensitive(self, cond, state):
        return f"{self._text(cond.field)} LIKE {self._like(cond.value)}"

    def convert_condition_field_eq_val_re(self, cond, state):
        regex = cond.value
        flags = "".join(sorted(RE2_FLAGS[f] for f in regex.flags if f in RE2_FLAGS))
        pattern = (f"(?{flags})" if flags else "") + str(regex.regexp)
        return f"regexp_matches({self._text(cond.field)}, {sql_string(pattern)})"

    def convert_condition_val_str(self, cond, state):
        # A keyword matches anywhere in the row's text, as SIEM full-text search does.
        value = cond.value
        if not value.startswith(SpecialChars.WILDCARD_MULTI):
            value = SpecialChars.WILDCARD_MULTI + value
        if not value.endswith(SpecialChars.WILDCARD_MULTI):
            value = value + SpecialChars.WILDCARD_MULTI
        return self.convert_condition_field_eq_val_str(ConditionFieldEqualsValueExpression("_raw", value), state)

    def convert_condition_val_num(self, cond, state):
        return self.convert_condition_val_str(
            ConditionFieldEqualsValueExpression(None, SigmaString(str(cond.value.number))), state
        )

    def finalize_query_default(self, rule, query, index, state):
        view = state.processing_state.get("view")
        return f'SELECT "_table", "_row" FROM "{view}" WHERE {query}'
