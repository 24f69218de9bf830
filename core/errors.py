"""The one base of every error that is about the user's input, files or setup rather than a bug."""

class FlowsrError(ValueError):
    """Its message is one line that says what was wrong and what to do; the CLI prints it without a traceback.

    Anything else that reaches the CLI is a bug: it shows its traceback and asks to be reported.
    """


class SettingsError(FlowsrError):
    """A setting (a number, a name, a combination of options) outside what flowsr can run."""


class ModelDirError(FlowsrError):
    """A model directory that cannot be used; the message says what to do."""


class BackendError(FlowsrError):
    """An execution backend that is missing, or that failed on one input (e.g. out of memory)."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none: for one-line reports."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def printable(text: str) -> str:
    """`text` with control characters escaped (a newline in a file name stays on the one line of an error)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def check_number(name: str, value, low: float, high: float, integer: bool = False) -> float:
    """`value` if it is a finite number in [low, high] (an int when `integer`), else SettingsError naming `name`."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise SettingsError(f"{name} must be {kind} in [{low:g}, {high:g}], got {value!r}")
    if not low <= value <= high:  # NaN fails every comparison
        raise SettingsError(f"{name} must be {kind} in [{low:g}, {high:g}], got {value!r}")
    return value

