"""Lists the docs' skipped code blocks and their reasons at the end of any run that ran the docs tests."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    ran = any("tests/docs/" in getattr(report, "nodeid", "")
              for reports in terminalreporter.stats.values() for report in reports)
    if not ran:
        return
    from tests.docs.blocks import DocsFormatError, all_blocks

    try:
        skipped = [block for block in all_blocks() if block.action == "skip"]
    except DocsFormatError:  # test_docs reports it
        return
    terminalreporter.section(f"docs code blocks not run ({len(skipped)})")
    for block in skipped:
        terminalreporter.write_line(f"{block.id} ({block.lang}): {block.reason}")
