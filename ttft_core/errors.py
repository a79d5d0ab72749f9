"""The one exception type a user can cause, and its bitstream specialisation."""


class TTFTError(Exception):
    """An error caused by user input (bad file, unknown codec, corrupt bitstream...).

    The message is one line that names the input; the command line prints it and exits non-zero.
    """


class BitstreamError(TTFTError):
    """A tile byte string that cannot be trusted: bad magic, version, checksum or model hash."""
