"""What a passage offers to quote: never a heading, a navigation line or a table of contents;
sentences, table rows and code lines, each with the heading or term it stands under."""

from __future__ import annotations

from helpline.rag.quotes import quotes


def texts(passage: str) -> list[str]:
    return [q.text for q in quotes(passage)]


def test_headings_are_context_not_quotes() -> None:
    found = quotes("Using the reset button\nHold the button for 12 seconds. Then release it.")
    assert [q.text for q in found] == ["Hold the button for 12 seconds.", "Then release it."]
    assert {q.context for q in found} == {"Using the reset button"}


def test_a_definition_term_labels_its_description() -> None:
    passage = (
        "- max_connections (integer)\n"
        "- Determines the maximum number of concurrent connections to the database server. "
        "The default is typically 100 connections."
    )
    found = quotes(passage)
    assert found[1].text == "The default is typically 100 connections."
    assert found[1].context == "max_connections (integer)"


def test_navigation_and_tables_of_contents_are_dropped() -> None:
    passage = (
        "Prev Up Next\n"
        "Docs \u203a Troubleshooting \u203a Resetting the router\n"
        "14.4.1. Disable Autocommit 14.4.2. Use COPY 14.4.3. Remove Indexes\n"
        "Use COPY to load all the rows in one command."
    )
    assert texts(passage) == ["Use COPY to load all the rows in one command."]
    assert quotes(passage)[0].context == ""


def test_a_menu_of_short_lines_is_no_heading() -> None:
    passage = (
        "- Installation\n- Wi-Fi settings\n- Firewall rules\n- Status lights\nThe LED is green."
    )
    found = quotes(passage)
    assert [q.text for q in found] == ["The LED is green."]
    assert found[0].context == ""


def test_table_rows_and_code_stay_quotable() -> None:
    passage = (
        "Table A.1. Error Codes\n"
        "Error Code | Condition Name\n"
        "55P03 | lock_not_available\n"
        "SELECT pg_cancel_backend(pid);\n"
        "Version 3.5.8 and 3.6.1 both fix this."
    )
    found = quotes(passage)
    assert [(q.kind, q.text) for q in found] == [
        ("row", "Error Code | Condition Name"),
        ("row", "55P03 | lock_not_available"),
        ("code", "SELECT pg_cancel_backend(pid);"),
        ("sentence", "Version 3.5.8 and 3.6.1 both fix this."),
    ]
    assert found[1].context == "Table A.1. Error Codes"
