"""Quality reports: JSON facts about a version (or a run's output) and a self-contained HTML page."""

from granary.curate.report.html import render_html
from granary.curate.report.stats import report_for_version, report_from_tables

__all__ = ["render_html", "report_for_version", "report_from_tables"]
