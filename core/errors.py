"""The one base of every error that is about the user's input, files or setup rather than a bug."""


class FlowsrError(ValueError):
    """Its message is one line that says what was wrong and what to do; the CLI prints it without a traceback."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none: for one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
