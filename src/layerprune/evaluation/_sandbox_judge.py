"""The two processes of a judged code run (`layerprune.evaluation.sandbox.run_program`, `judge=`): the task's tests in
one, the model's program in the other. Kept as source text: each side runs as a fresh `python -I` in the sandbox, with
the standard library only (see docs/sandbox.md, "The verdict is decided outside the program").
"""

# The two sides of a judged run (see `layerprune.evaluation.sandbox.run_program`'s `judge`). They speak in frames
# (4-byte big-endian length, then JSON) of tagged plain data: [tag, payload], tags n (None), b (bool), i (int, decimal
# string), f (float, repr), c (complex), s (str), y (bytes, hex), l (list), t (tuple), d (dict, [key, value] pairs), S
# (set), F (frozenset), r (a reference to an object that stays in the program's process). The judge decodes strictly:
# only these builtin types are ever made, so nothing of the program's making runs in the judge.
PROTOCOL = r'''
import builtins as _builtins
import json as _json
import os as _os
import struct as _struct
import sys as _sys

_sys.set_int_max_str_digits(0)
_REQUESTS, _ANSWERS = 3, 4
_STICKY = []  # a protocol failure, kept even where a test's bare `except:` swallowed its exception


class _ProgramEnded(BaseException):
    """The program's process closed its end: it exited (or was ended) before the tests were done."""


class _NotPlainData(BaseException):
    """What came back is not plain data (BaseException: a test's `except Exception` cannot swallow it)."""


def _send(fd, message):
    data = _json.dumps(message).encode()
    data = _struct.pack(">I", len(data)) + data
    try:
        while data:
            data = data[_os.write(fd, data) :]
    except (BrokenPipeError, ConnectionResetError):
        _STICKY.append(_ProgramEnded("its end of the pipe is closed"))
        raise _STICKY[-1] from None


def _read(fd, size):
    chunks = []
    while size:
        chunk = _os.read(fd, min(size, 1 << 20))
        if not chunk:
            _STICKY.append(_ProgramEnded("its end of the pipe is closed"))
            raise _STICKY[-1]
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _receive(fd):
    (size,) = _struct.unpack(">I", _read(fd, 4))
    try:
        return _json.loads(_read(fd, size))
    except (ValueError, RecursionError) as error:
        _STICKY.append(_NotPlainData(f"not JSON: {error}"))
        raise _STICKY[-1] from None
'''

JUDGE = (
    PROTOCOL
    + r'''
import re as _re
import traceback as _traceback

_VERDICT = 5
_INT = _re.compile(r"-?[0-9]+")
_FLOAT = _re.compile(r"-?(inf|nan|[0-9]+(\.[0-9]*)?(e[-+]?[0-9]+)?)")
_BUILTIN_NAMES = frozenset(dir(_builtins))


class _Remote:
    """An object that stays in the program's process: it can be called, asked for an attribute or iterated there;
    it equals only itself."""

    __slots__ = ("_ref",)

    def __init__(self, ref):
        object.__setattr__(self, "_ref", ref)

    def __call__(self, *args, **kwargs):
        return _request(["call", self._ref, _encode(list(args)), _encode(kwargs)])

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _request(["getattr", self._ref, name])

    def __iter__(self):
        return iter(_request(["iter", self._ref]))

    def __repr__(self):
        return f"<the program's object #{self._ref}>"


def _encode(value):
    kind = type(value)
    if value is None:
        return ["n", None]
    if kind is bool:
        return ["b", value]
    if kind is int:
        return ["i", str(value)]
    if kind is float:
        return ["f", repr(value)]
    if kind is complex:
        return ["c", [repr(value.real), repr(value.imag)]]
    if kind is str:
        return ["s", value]
    if kind is bytes:
        return ["y", value.hex()]
    if kind in (list, tuple, set, frozenset):
        return [{list: "l", tuple: "t", set: "S", frozenset: "F"}[kind], [_encode(item) for item in value]]
    if kind is dict:
        return ["d", [[_encode(k), _encode(v)] for k, v in value.items()]]
    if kind is _Remote:
        return ["r", value._ref]
    raise TypeError(f"the judge passes plain data only to the program, not {kind.__name__}")


def _decode(node):
    if type(node) is not list or len(node) != 2 or type(node[0]) is not str:
        raise _NotPlainData(f"not a tagged value: {str(node)[:100]}")
    tag, value = node
    kind = type(value)
    if tag == "n" and value is None:
        return None
    if tag == "b" and kind is bool:
        return value
    if tag == "i" and kind is str and _INT.fullmatch(value):
        return int(value)
    if tag == "f" and kind is str and _FLOAT.fullmatch(value):
        return float(value)
    if tag == "c" and kind is list and len(value) == 2:
        return complex(_decode(["f", value[0]]), _decode(["f", value[1]]))
    if tag == "s" and kind is str:
        return value
    if tag == "y" and kind is str and _re.fullmatch("(?:[0-9a-f]{2})*", value):
        return bytes.fromhex(value)
    if tag in ("l", "t", "S", "F") and kind is list:
        items = [_decode(item) for item in value]
        try:
            return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
        except TypeError as error:  # an unhashable member of a set
            raise _NotPlainData(str(error)) from None
    if tag == "d" and kind is list:
        result = {}
        for pair in value:
            if type(pair) is not list or len(pair) != 2:
                raise _NotPlainData("a dict entry that is not a pair")
            try:
                result[_decode(pair[0])] = _decode(pair[1])
            except TypeError as error:
                raise _NotPlainData(str(error)) from None
        return result
    if tag == "r" and kind is int:
        return _Remote(value)
    raise _NotPlainData(f"unknown or malformed value {tag!r}")


def _raised(name, message):
    """A builtin exception of the program's exception's name (RuntimeError for one of its own classes)."""
    kind = getattr(_builtins, name, None) if type(name) is str else None
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        kind = RuntimeError
    text = f"the program raised {str(name)[:100]}: {str(message)[:2000]}"
    try:
        return kind(text)
    except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError wants five arguments
        return RuntimeError(text)


def _request(message):
    try:
        return _exchange(message)
    except _NotPlainData as error:
        _STICKY.append(error)
        raise


def _exchange(message):
    _send(_REQUESTS, message)
    answer = _receive(_ANSWERS)
    if type(answer) is list and len(answer) == 2 and answer[0] == "ok":
        try:
            return _decode(answer[1])
        except RecursionError:
            raise _NotPlainData("nested too deeply") from None
    if type(answer) is list and len(answer) == 3 and answer[0] == "raise":
        raise _raised(answer[1], answer[2])
    raise _NotPlainData(f"an answer out of protocol: {str(answer)[:100]}")


def _judge(prompt, tests, entry_point):
    try:
        ready = _receive(_ANSWERS)
        if type(ready) is list and len(ready) == 2 and ready[0] == "error":
            return {"verdict": "runtime_error", "detail": f"the program raised: {str(ready[1])[-500:]}"}
        if not (type(ready) is list and len(ready) == 2 and ready[0] == "ready" and type(ready[1]) is dict):
            raise _NotPlainData(f"no ready message: {str(ready)[:100]}")
        names = {name: ref for name, ref in ready[1].items() if type(ref) is int}
        namespace = {"__name__": "__judge__", "__builtins__": _builtins}
        if entry_point is not None:
            # Only the function under test comes from the program; the prompt's helpers (HumanEval/32's `poly`)
            # are the task's own.
            exec(compile(prompt, "prompt.py", "exec"), namespace)
            if entry_point not in names:
                return {"verdict": "runtime_error", "detail": f"the program defines no function {entry_point}"}
            namespace[entry_point] = _Remote(names[entry_point])
        else:  # MBPP's tests call the program's functions (and classes) by name; never a builtin's name
            namespace.update({n: _Remote(r) for n, r in names.items() if n not in _BUILTIN_NAMES})
        exec(compile(tests, "tests.py", "exec"), namespace)
        if entry_point is not None:
            namespace["check"](namespace[entry_point])
        if _STICKY:
            raise _STICKY[0]
        return {"verdict": "pass"}
    except _ProgramEnded as error:
        return {"verdict": "early_exit", "detail": f"the program's process ended before the tests were done ({error})"}
    except _NotPlainData as error:
        return {"verdict": "runtime_error", "detail": f"the program's answer is not plain data: {error}"}
    except AssertionError:
        _traceback.print_exc()
        return {"verdict": "wrong_answer", "detail": _traceback.format_exc(limit=-1)[-500:]}
    except BaseException:  # noqa: BLE001 - whatever else stopped the tests
        _traceback.print_exc()
        return {"verdict": "runtime_error", "detail": _traceback.format_exc(limit=-1)[-500:]}


_os.write(_VERDICT, _json.dumps(_judge(PROMPT, TESTS, ENTRY_POINT)).encode())
'''
)

RUNNER = (
    PROTOCOL
    + r"""
import traceback as _traceback

_refs = []


def _ref(value):
    _refs.append(value)
    return ["r", len(_refs) - 1]


def _encode(value):
    if value is None:
        return ["n", None]
    if isinstance(value, bool):
        return ["b", bool(value)]
    if isinstance(value, int):
        return ["i", int.__repr__(value)]
    if isinstance(value, float):
        return ["f", float.__repr__(value)]
    if isinstance(value, complex):
        return ["c", [float.__repr__(value.real), float.__repr__(value.imag)]]
    if isinstance(value, str):
        return ["s", str.__str__(value)]
    if isinstance(value, bytes):
        return ["y", bytes.hex(value)]
    for kind, tag in ((list, "l"), (tuple, "t"), (set, "S"), (frozenset, "F")):
        if isinstance(value, kind):
            return [tag, [_encode(item) for item in kind.__iter__(value)]]
    if isinstance(value, dict):
        return ["d", [[_encode(k), _encode(v)] for k, v in dict.items(value)]]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return _encode(value.tolist())
    return _ref(value)


def _decode(node):
    tag, value = node
    if tag in ("n", "b", "s"):
        return value
    if tag in ("i", "f"):
        return {"i": int, "f": float}[tag](value)
    if tag == "c":
        return complex(float(value[0]), float(value[1]))
    if tag == "y":
        return bytes.fromhex(value)
    if tag == "d":
        return {_decode(k): _decode(v) for k, v in value}
    if tag == "r":
        return _refs[value]
    return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](_decode(item) for item in value)


def _serve():
    with open("main.py") as handle:
        source = handle.read()
    namespace = {"__name__": "__candidate__", "__builtins__": _builtins}
    try:
        exec(compile(source, "candidate.py", "exec"), namespace)
    except Exception:  # noqa: BLE001 - SystemExit is not caught: the process ends, the judge sees its pipe close
        _traceback.print_exc()
        _send(_ANSWERS, ["error", _traceback.format_exc(limit=-1)[-1000:]])
        return
    names = {}
    for name, value in list(namespace.items()):
        if type(name) is str and not name.startswith("__") and callable(value):
            names[name] = _ref(value)[1]
    _send(_ANSWERS, ["ready", names])
    while True:
        try:
            message = _receive(_REQUESTS)
        except _ProgramEnded:
            return  # the judge is done
        try:
            operation, target = message[0], _refs[message[1]]
            if operation == "call":
                result = target(*_decode(message[2]), **_decode(message[3]))
            elif operation == "getattr":
                result = getattr(target, message[2])
            else:
                result = list(target)
            answer = ["ok", _encode(result)]
        except Exception as error:  # noqa: BLE001 - the judge raises it as a builtin exception of the same name
            try:
                answer = ["raise", type(error).__name__, str(error)[:2000]]
            except Exception:  # noqa: BLE001
                answer = ["raise", "RuntimeError", "an exception that cannot be printed"]
        _send(_ANSWERS, answer)


_serve()
"""
)
