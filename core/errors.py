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


def out_of_memory(err: BaseException) -> str:
    """The one line for an image that ran out of memory (host or GPU)."""
    return f"out of memory ({first_line(err)}); use a smaller --tile or --max-megapixels"


def printable(text: str) -> str:
    """`text` with control characters escaped (a newline in a file name stays on the one line of an error)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def out_of_bounds(value, low: float, high: float, integer: bool = False) -> str | None:
    """Why `value` is not a finite number (an integer when `integer`) in [low, high], or None when it is."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and integer and isinstance(value, float):
        number = value.is_integer()  # False for nan and inf too
    if number and low <= value <= high:  # NaN fails every comparison
        return None
    return f"must be {'an integer' if integer else 'a number'} in [{low:g}, {high:g}], got {value!r:.40}"


def check_number(name: str, value, low: float, high: float, integer: bool = False):
    """`value` if it is a finite number in [low, high] (an integer when `integer`), else SettingsError naming `name`."""
    reason = out_of_bounds(value, low, high, integer)
    if reason is not None:
        raise SettingsError(f"{name} {reason}")
    return value
