"""One-line error messages."""

from warprl.errors import first_line


def test_first_line_of_an_error():
    assert first_line(ValueError("bad thing\nmore detail")) == "bad thing"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("x" * 300), 10) == "x" * 10
