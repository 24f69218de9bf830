"""The one base of every error that is about the user's input, files or setup rather than a bug."""


class FlowsrError(ValueError):
    """Its message is one line that says what was wrong and what to do; the CLI prints it without a traceback."""
