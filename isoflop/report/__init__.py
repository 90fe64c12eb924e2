"""``report.html`` with PNG figures for a ladder's ``analysis.json`` (readable offline: images embedded and beside)."""

from isoflop.report.html import write_report

__all__ = ["write_report"]
