"""The argument parsers of train, validate and infer, generated from the config schema.

Every flag is a :class:`asl.config.Config` field; its spellings, help and the commands that
read it are declared on the field (``asl.config.setting``), nowhere else. Hyphen and underscore spellings
both work (``--model-path`` and ``--model_path``), as do the official
repository's names (``--input_size``, ``--pic_path``, ``-b``, ``-j``, ``--th``).
Only flags given on the command line override the YAML config.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import re
import sys
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from .config import EXPORT, INFER, TRAIN, VALIDATE, Config, fields_for, flag_specs, load_config
from .errors import ASLError, ConfigError

# Each command's flags, generated from the schema (asl.config: a field's flags, help and commands).
TRAIN_FIELDS = fields_for(TRAIN)
VALIDATE_FIELDS = fields_for(VALIDATE)
INFER_FIELDS = fields_for(INFER)
EXPORT_FIELDS = fields_for(EXPORT)


def prog(command: str) -> str:
    """The program name in usage lines: ``asl-train`` when run as the console script, else ``train.py``."""
    return f"asl-{command}" if os.path.basename(sys.argv[0] or "").startswith("asl-") else f"{command}.py"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one ``error:`` line (exit 2), not usage text."""

    def error(self, message: str):
        raise ConfigError(message)


def _twins(flags: Iterable[str]) -> List[str]:
    """The underscore / hyphen twins of ``flags`` that are not among them (``--model_path``)."""
    out: List[str] = []
    for f in flags:
        if f.startswith("--"):
            for v in ("--" + f[2:].replace("-", "_"), "--" + f[2:].replace("_", "-")):
                if v not in flags and v not in out:
                    out.append(v)
    return out


def build_parser(
    prog: str,
    description: str,
    fields: Sequence[str],
    positional_data: bool = False,
    defaults: Optional[Config] = None,
    notes: Optional[Dict[str, str]] = None,
    epilog: Optional[str] = None,
    command: Optional[str] = None,
) -> argparse.ArgumentParser:
    """An argparse parser for ``fields``; values it returns override the config.

    Each flag is listed once in ``--help`` (its underscore twin is accepted but not listed), with
    the default that will run: ``notes[field]`` where given, else the value in ``defaults``, and
    ``command``'s own help text where a field has one per command (``--output``).
    """
    p = _Parser(
        prog=prog,
        description=description,
        epilog=epilog,
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", help="YAML config file (flags override it)")
    if positional_data:
        p.add_argument("data_root_pos", nargs="?", metavar="DATA_ROOT", help="dataset folder")
    defaults = defaults if defaults is not None else Config()
    notes = notes or {}
    for spec in flag_specs(fields, command):
        name, flags, help_text, typ, is_list = spec.name, spec.flags, spec.help, spec.type, spec.is_list
        default = notes.get(name, repr(getattr(defaults, name)))
        kwargs = dict(dest=name, metavar=name.upper())
        if typ is bool:
            kwargs = dict(dest=name, action=argparse.BooleanOptionalAction)
        elif is_list:
            kwargs.update(nargs="+", type=typ)
        else:
            kwargs["type"] = typ
        if name in notes:  # the command says what runs when it is unset: the schema's general note goes
            help_text = re.sub(r" \(unset: [^)]*\)", "", help_text)
        unset = getattr(defaults, name) is None and "(unset:" in help_text and name not in notes
        shown = help_text if "(default:" in help_text or unset else f"{help_text} (default: {default})"
        p.add_argument(*flags, help=shown, **kwargs)
        twins = _twins(flags)
        if twins:
            p.add_argument(*twins, help=argparse.SUPPRESS, **kwargs)
    if epilog is None:
        p.epilog = "Underscore spellings of every flag (--model_path, --input_size, ...) work too."
    return p


def _check_once(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """A setting given under two of its names (``--init-checkpoint A --pretrained-path B``) is
    refused: argparse would keep the last one and drop the other silently. The same name given
    twice is the shell's usual "the last one wins"."""
    used: Dict[str, List[str]] = {}
    for token in argv:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        action = parser._option_string_actions.get(name) if name.startswith("-") else None
        if action is None or action.dest in ("help", "config"):
            continue
        canonical = name.replace("_", "-")
        if canonical.startswith("--no-"):  # --pretrained / --no-pretrained: one name, two values
            canonical = "--" + canonical[5:]
        names = used.setdefault(action.dest, [])
        if canonical not in names:
            names.append(canonical)
    for dest, names in used.items():
        if len(names) > 1:
            raise ConfigError(f"{' and '.join(names)} set the same setting ({dest}): give it once")


def parse_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None):
    """(``--config`` path or None, {field: value} of the flags actually given)."""
    args = list(sys.argv[1:] if argv is None else argv)
    ns = vars(parser.parse_args(args))
    _check_once(parser, args)
    config_path = ns.pop("config", None)
    pos = ns.pop("data_root_pos", None)
    if pos is not None:
        ns.setdefault("data_root", pos)
    return config_path, ns


def parse_args(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None, base: Optional[Config] = None
) -> Config:
    """Parse flags, then defaults (or ``base``) <- ``--config`` YAML <- flags."""
    config_path, overrides = parse_flags(parser, argv)
    return load_config(config_path, overrides, base=base)


class _StderrHandler(logging.StreamHandler):
    """Plain messages to whatever ``sys.stderr`` is when a record is emitted."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; sys.stderr is read at each emit
        pass


def setup_logging(verbose: bool = True) -> None:
    """The command's logging: plain messages on stderr, INFO (WARNING when not ``verbose``);
    only the main process logs under torchrun. Called once by each command-line entry point;
    the library never configures logging. Calling it again only sets the level."""
    rank = int(os.environ.get("RANK", "0"))
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        root.addHandler(_StderrHandler())
    root.setLevel(logging.INFO if (verbose and rank == 0) else logging.WARNING)


# Packages a command may find missing, and what to install (the ONNX tagging path needs only onnxruntime).
_MISSING = {
    "torch": "PyTorch",
    "torchvision": "PyTorch",
    "timm": "PyTorch",
}
_INSTALL = {
    "PyTorch": "this command needs PyTorch (torch, torchvision, timm) here: pip install -r requirements.txt; "
    "tagging pictures with an exported .onnx model needs only onnxruntime "
    "(pip install -r requirements-infer.txt, then infer.py --model-path model.onnx)",
    "onnxruntime": "running an .onnx model needs onnxruntime: pip install -r requirements-infer.txt",
    "onnx": "exporting needs onnx and onnxruntime: pip install -r requirements-export.txt",
    "pycocotools": "COCO annotations are read with pycocotools: pip install -r requirements.txt",
    "jax": "asl.jax needs JAX: pip install -r requirements-jax.txt",
}


def missing_package(e: ImportError) -> Optional[str]:
    """The install hint for an ImportError of a known optional dependency, else None."""
    top = (e.name or "").split(".")[0]
    what = _MISSING.get(top, top)
    return _INSTALL.get(what)


def command(module: str) -> Callable[[Optional[Sequence[str]]], Optional[int]]:
    """The ``main`` of ``asl.<module>``, imported when called, so that a missing PyTorch is one
    ``error:`` line of :func:`run` rather than a traceback at import."""

    def main(argv: Optional[Sequence[str]] = None) -> Optional[int]:
        import importlib

        return importlib.import_module(f"asl.{module}").main(argv)

    return main


def _write_error(text: str) -> None:
    try:
        print(text.translate(_CONTROL), file=sys.stderr)
    except (OSError, ValueError, AttributeError):  # stderr closed as well: nothing left to tell
        pass


def _flush_stdout() -> None:
    if sys.stdout is not None:  # None where the command started with its stdout closed
        sys.stdout.flush()  # a closed pipe or a full disk shows here, not at interpreter exit


# C0 and C1 control characters but tab, line feed and carriage return (progress bars), as \xNN:
# a class name or a file name holding ESC sequences never drives the terminal.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if c not in (0x09, 0x0A, 0x0D)}


class _Terminal:
    """A command's standard output or error for one :func:`run`: control characters written to
    it are escaped, and the OSError a write raised is remembered (a full disk behind standard
    output is told apart from a full ``--output``)."""

    def __init__(self, stream):
        self._stream, self.error = stream, None

    def write(self, text):
        try:
            return self._stream.write(text.translate(_CONTROL) if isinstance(text, str) else text)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        try:
            return self._stream.flush()
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name):
        return getattr(self._stream, name)


def run(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Call a script's main; bad input becomes one ``error: ...`` line and exit code 2.

    For this call, standard output and error escape control characters (a class name holding a
    terminal escape is printed as ``\\x1b``), and standard output that cannot encode a class name
    (an ASCII-only terminal) gets it escaped (``\\u00e9``); a full or closed standard output is one
    error line."""
    stdout, stderr, errors = sys.stdout, sys.stderr, getattr(sys.stdout, "errors", None)
    if errors == "strict" and hasattr(stdout, "reconfigure"):
        stdout.reconfigure(errors="backslashreplace")
    out = _Terminal(stdout) if stdout is not None else None
    sys.stdout = out
    if stderr is not None:
        sys.stderr = _Terminal(stderr)
    try:
        rc = int(main(argv) or 0)
        _flush_stdout()
        return rc
    except ASLError as e:
        text = str(e)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", 0)
        _write_error("interrupted" + (f" by {e.signame}" if signum else ""))
        return 128 + signum if signum else 130
    except BrokenPipeError:
        # The reader went away (``infer.py ... | head -1``): stop quietly, as Unix tools do.
        # Python flushes stdout again at exit, so point it at /dev/null first.
        _silence_stdout()
        return 128 + 13  # SIGPIPE
    except ImportError as e:
        hint = missing_package(e)
        if hint is None:
            raise
        text = f"{hint} ({e})"
    except OSError as e:
        if out is not None and e is out.error and e.errno in (errno.ENOSPC, errno.EBADF, errno.EDQUOT, errno.EIO):
            _silence_stdout()
            text = f"cannot write to standard output: {e.strerror or e}"
        elif e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) and not getattr(e, "filename", None):
            text = f"cannot write an output of this command: {e.strerror or e}"  # one a command failed to name
        else:
            raise
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        if errors == "strict" and hasattr(stdout, "reconfigure"):
            try:
                stdout.reconfigure(errors=errors)
            except (OSError, ValueError):
                pass
    if "Original Traceback" in text:
        # Raised in a DataLoader worker: torch wraps it in the worker's traceback text;
        # the user's message is the last line, after the exception's class name.
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    msg = " ".join(text.split())  # one line, whatever the message held
    _write_error(f"error: {msg}")
    return 2


def _silence_stdout() -> None:
    """Point standard output at /dev/null: Python flushes it again at exit."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


DATA_FIELDS = ("data_root", "dataset", "tag_separator", "val_fraction", "output")


def data_config(command: str, description: str, argv, output_note: str, extra: Sequence[str] = ()) -> Config:
    """The config of an ``asl-data`` command line: the dataset's fields of the schema, ``--dataset``
    defaulting to ``auto``; logging set up."""
    parser = build_parser(
        f"asl-data {command}",
        description,
        [*DATA_FIELDS, *extra],
        positional_data=True,
        notes={"dataset": "'auto'", "output": output_note},
    )
    config_path, flags = parse_flags(parser, argv)
    flags.setdefault("dataset", "auto")
    cfg = load_config(config_path, flags)
    setup_logging(verbose=False)
    return cfg


def data_console() -> None:
    """``asl-data inspect DIR`` / ``asl-data convert DIR --output NEW`` / ``asl-data shard DIR NEW``."""
    commands = {"inspect": "data.inspect", "convert": "data.convert", "shard": "data.shard"}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        _write_error(f"usage: asl-data {{{','.join(commands)}}} DATA_ROOT [flags]  (asl-data inspect --help)")
        raise SystemExit(2)
    name = sys.argv.pop(1)
    sys.argv[0] = f"asl-data {name}"
    raise SystemExit(run(command(commands[name])))
