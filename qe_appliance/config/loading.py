"""Reading a configuration: YAML parsed with every key's line recorded, decoded leaf by leaf against the schema
(`msgspec.convert` on each value, so the limits in the schema's annotations are the only ones) so that every
problem in a file is reported at once (file:line, key path, a did-you-mean), and the flags of `aqe-v3 mcp start`
applied on top.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import pathlib
import re
from collections.abc import Callable
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Final, Union, get_args, get_origin
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect as mi

from qe_appliance.config.paths import DEFAULT_STATE_DIR
from qe_appliance.config.schema import (
    DEFAULT_NAMESPACE,
    AuthConfig,
    Config,
    ConfigError,
    FleetConfig,
    MemoryConfig,
    PoolConfig,
    RegistryConfig,
    ServerConfig,
    StoreConfig,
    is_loopback,
)

if TYPE_CHECKING:
    import yaml

MAX_FILE_BYTES: Final = 1 << 20
# A full configuration is a few hundred YAML nodes; the bound stops alias bombs (billion laughs) early.
MAX_NODES: Final = 10_000
MAX_DEPTH: Final = 32
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES: Final = 107

_MERGE_TAG: Final = "tag:yaml.org,2002:merge"


KeyPath = tuple[str | int, ...]
# (text before the key path, e.g. "qe-mcp.yaml:12", and a number to sort messages by)
Locator = Callable[[KeyPath], tuple[str, int]]


class _Invalid:
    """Marks a value that already produced an error, so dependent checks stay quiet."""


_INVALID: Final = _Invalid()


def load_config(path: str | os.PathLike[str] | None, warn: Callable[[str], None] | None = None) -> Config:
    """Read and validate a YAML configuration; None gives the built-in defaults.

    The file's relative paths are taken from the file's directory (see `_anchored`); `warn` hears of each.
    Raises ConfigError listing every problem in the file, each with its line and key path.
    """
    if path is None:
        return Config()
    # Imported here, not by every start: a server started without a file (stdio, say) never needs it.
    import yaml

    name = os.fsdecode(path)
    text = _read_text(path, name)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        root = loader.get_single_node()
        if root is None:  # nothing but comments: every key keeps its default
            return _anchored(Config(), pathlib.Path(name).absolute().parent, warn)
        survey = _Survey(name)
        survey.walk(root, (), 0)
        data = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([_yaml_problem(name, exc)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{name}: YAML error: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{name}: YAML nested too deeply; a configuration is a few levels deep"]) from None
    finally:
        loader.dispose()

    def locate(key_path: KeyPath) -> tuple[str, int]:
        for end in range(len(key_path), -1, -1):
            line = survey.lines.get(key_path[:end])
            if line is not None:
                return f"{name}:{line}", line
        raise AssertionError("the survey always records the top level")

    checker = _Checker(locate)
    if not isinstance(data, dict):
        checker.fail((), f"the top level must be a mapping of blocks such as `pool:`, got {_describe(data)}")
        raise ConfigError(checker.messages())
    for key_path, first in survey.repeats:
        checker.fail(key_path, f"appears twice (first on line {first}); YAML keeps only the last one, "
                               "so delete one of them")
    config = checker.decode(data, Config, (), Config())
    if checker.errors:
        raise ConfigError(checker.messages())
    assert isinstance(config, Config)
    return _anchored(config, pathlib.Path(name).absolute().parent, warn)


def _anchored(config: Config, base: pathlib.Path, warn: Callable[[str], None] | None) -> Config:
    """The file locations of `config` taken from the configuration file's directory `base`, not from wherever
    the server (or the CLI looking for its socket) was started: relative server.stateDir, controlSocket,
    auth.tokensFile and fleet.runtimeDir, and an empty stateDir outside systemd (`base`/.aqe-state)."""
    def resolve(key: str, value: str) -> str:
        # $VARIABLES and ~ are expanded where the path is used (systemd's $CREDENTIALS_DIRECTORY, say).
        if not value or os.path.isabs(value) or value.startswith(("$", "~")):
            return value
        resolved = str(base / value)
        if warn is not None:
            warn(f"{key}: the relative path {value!r} is taken from the configuration file's directory: {resolved}")
        return resolved

    server, fleet = config.server, config.fleet
    state = resolve("server.stateDir", server.state_dir)
    if not state and not os.environ.get("STATE_DIRECTORY"):
        state = str(base / DEFAULT_STATE_DIR)
    auth = msgspec.structs.replace(server.auth, tokens_file=resolve("server.auth.tokensFile", server.auth.tokens_file))
    server = msgspec.structs.replace(
        server, state_dir=state, auth=auth, control_socket=resolve("server.controlSocket", server.control_socket)
    )
    fleet = msgspec.structs.replace(fleet, runtime_dir=resolve("fleet.runtimeDir", fleet.runtime_dir))
    return msgspec.structs.replace(config, server=server, fleet=fleet)


def apply_overrides(
    cfg: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    pool_size: int | None = None,
    strategy: str | None = None,
    optimized: bool = False,
) -> Config:
    """Apply the command-line flags of `aqe-v3 mcp start` on top of a loaded Config.

    `pool_size` sets pool.maxConnections and lowers minConnections to it when that was larger.
    `optimized` (the design's `--optimized`) forces on registry.cacheEnabled, registry.fuzzyMatchEnabled
    and monitoring.enabled. The result is validated like a file; a bad value raises ConfigError naming
    the flag.
    """
    patch: dict[str, dict[str, Any]] = {}
    flags: dict[KeyPath, str] = {}

    def put(block: str, key: str, value: Any, flag: str) -> None:
        patch.setdefault(block, {})[key] = value
        flags[(block, key)] = flag
        flags.setdefault((block,), flag)

    if host is not None:
        put("server", "host", host, f"--host {host}")
    if port is not None:
        put("server", "port", port, f"--port {port}")
    if pool_size is not None:
        put("pool", "maxConnections", pool_size, f"--pool-size {pool_size}")
        if isinstance(pool_size, int) and max(pool_size, 0) < cfg.pool.min_connections:
            put("pool", "minConnections", max(pool_size, 0), f"--pool-size {pool_size}")
    if strategy is not None:
        put("balancer", "strategy", strategy, f"--strategy {strategy}")
    if optimized:
        put("registry", "cacheEnabled", True, "--optimized")
        put("registry", "fuzzyMatchEnabled", True, "--optimized")
        put("monitoring", "enabled", True, "--optimized")

    def locate(key_path: KeyPath) -> tuple[str, int]:
        for end in range(len(key_path), 0, -1):
            flag = flags.get(key_path[:end])
            if flag is not None:
                return flag, 0
        return "command line", 0

    checker = _Checker(locate)
    result = checker.decode(patch, Config, (), cfg)
    if checker.errors:
        raise ConfigError(checker.messages())
    assert isinstance(result, Config)
    return result


def _read_text(path: str | os.PathLike[str], name: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{name}: no such file; check the path, or copy the documented defaults "
                           "from config/qe-mcp.yaml"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{name}: is a directory; give the path of the YAML file itself"]) from None
    except PermissionError:
        raise ConfigError([f"{name}: permission denied; make the file readable by the user that runs "
                           "aqe-mcp"]) from None
    except OSError as exc:
        raise ConfigError([f"{name}: cannot be read ({exc.strerror}); check the path"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([f"{name}: larger than 1 MiB; a configuration is a few KiB, so this is probably "
                           "not the right file"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([f"{name}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file "
                           "as UTF-8"]) from None


def _yaml_problem(name: str, exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
    problem = exc.problem or exc.context or "malformed YAML"
    context = ""
    if exc.context and exc.problem and exc.context_mark is not None:
        context = f" ({exc.context} at line {exc.context_mark.line + 1})"
    return f"{where}: YAML syntax error: {problem}{context}; check indentation, colons and quotes"


class _Survey:
    """One pass over the composed YAML before any value is built.

    Records the line of every key path, finds keys written twice, and refuses documents whose
    anchors and aliases expand past MAX_NODES, before construction could pay for the expansion.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: dict[KeyPath, int] = {}
        self.repeats: list[tuple[KeyPath, int]] = []
        self.visits = 0
        self.distinct: set[int] = set()
        self.enclosing: set[int] = set()  # the nodes being walked right now, to catch an alias loop

    def walk(self, node: yaml.Node, path: KeyPath, depth: int) -> None:
        self._count(node, depth)
        if id(node) in self.enclosing:
            line = node.start_mark.line + 1
            raise ConfigError([f"{self.name}:{line}: an alias refers to a list or mapping that contains it, "
                               "which never ends; write the values out instead"])
        self.enclosing.add(id(node))
        self._walk_children(node, path, depth)
        self.enclosing.discard(id(node))

    def _walk_children(self, node: yaml.Node, path: KeyPath, depth: int) -> None:
        import yaml

        # setdefault: a merged mapping walked at the same path must not move the line of its host.
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.walk(item, (*path, index), depth + 1)
        elif isinstance(node, yaml.MappingNode):
            own = [(key, value) for key, value in node.value if key.tag != _MERGE_TAG]
            # Merged keys are walked first so the mapping's own keys win, as they do in YAML.
            for key, value in node.value:
                if key.tag == _MERGE_TAG:
                    self._count(key, depth + 1)
                    merged = value.value if isinstance(value, yaml.SequenceNode) else [value]
                    for source in merged:
                        self.walk(source, path, depth + 1)
            seen: dict[str, int] = {}
            for key, value in own:
                line = key.start_mark.line + 1
                if not isinstance(key, yaml.ScalarNode):  # a complex key is refused later, but still counted
                    self.walk(key, path, depth + 1)
                    self.walk(value, path, depth + 1)
                    continue
                child = (*path, key.value)
                if key.value in seen:
                    self.repeats.append((child, seen[key.value]))
                seen[key.value] = line
                self.walk(value, child, depth + 1)
                self.lines[child] = line

    def _count(self, node: yaml.Node, depth: int) -> None:
        self.visits += 1
        self.distinct.add(id(node))
        line = node.start_mark.line + 1
        if depth > MAX_DEPTH:
            raise ConfigError([f"{self.name}:{line}: nested more than {MAX_DEPTH} levels deep; "
                               "a configuration is a few levels deep"])
        if self.visits > MAX_NODES:
            if len(self.distinct) < self.visits:
                raise ConfigError([f"{self.name}:{line}: anchors and aliases expand to more than "
                                   f"{MAX_NODES} YAML nodes (a billion-laughs pattern?); the file is refused "
                                   "- write the values out instead of repeating aliases"])
            raise ConfigError([f"{self.name}:{line}: more than {MAX_NODES} YAML nodes; a configuration has a "
                               "few hundred, so this is probably not the right file"])


class _Decoded(msgspec.Struct, frozen=True):
    """One struct's fields after decoding, for the checks that relate fields to each other."""

    values: dict[str, Any]  # Python field name -> value, or _INVALID when it already failed
    given: frozenset[str]  # the fields this source set (the others came from the current config)
    path: KeyPath


class _Checker:
    """Turns plain YAML data into Config structs, collecting every problem instead of stopping at one."""

    def __init__(self, locate: Locator) -> None:
        self.locate = locate
        self.errors: list[tuple[int, str]] = []

    def fail(self, path: KeyPath, problem: str) -> None:
        where, order = self.locate(path)
        self.errors.append((order, f"{where}: {_dotted(path)}: {problem}" if path else f"{where}: {problem}"))

    def messages(self) -> list[str]:
        return [text for _, text in sorted(self.errors, key=lambda error: error[0])]

    def decode(self, raw: Any, annotation: Any, path: KeyPath, current: Any) -> Any:
        """`raw` decoded as the schema's `annotation` says (Struct, mapping, list or leaf), or _INVALID."""
        info = _info(annotation)
        if isinstance(info, mi.StructType):
            return self._struct(raw, info, path, current)
        if isinstance(info, mi.DictType):
            return self._entries(raw, info, get_args(_bare(annotation))[1], path, current)
        if isinstance(info, mi.VarTupleType):
            return self._list(raw, get_args(_bare(annotation))[0], path)
        return self._scalar(raw, annotation, path, current)

    def _struct(self, raw: Any, info: mi.StructType, path: KeyPath, current: Any) -> Any:
        if raw is None:  # a block whose keys are all commented out keeps its values
            return current
        if not isinstance(raw, dict):
            self.fail(path, f"expected a mapping of `key: value` lines, got {_describe(raw)}")
            return _INVALID
        fields = {field.encode_name: field for field in info.fields}
        strays = [key for key in raw if key not in fields]
        for key in strays:
            self._unknown(path, key, list(fields), "key")
        values: dict[str, Any] = {}
        for field in _fields(info.cls):
            if field.encode_name in raw:
                key_path = (*path, field.encode_name)
                values[field.name] = self.decode(raw[field.encode_name], field.type, key_path,
                                                 getattr(current, field.name, None))
            elif current is None:  # a new entry of an open mapping: no default to fall back on
                self.fail((*path, field.encode_name), "missing; this key is required")
                values[field.name] = _INVALID
            else:
                values[field.name] = getattr(current, field.name)
        given = frozenset(field.name for field in info.fields if field.encode_name in raw)
        check = _CHECKS.get(info.cls)
        if check is not None:
            check(self, _Decoded(values, given, path))
        if strays or any(value is _INVALID for value in values.values()):
            return _INVALID
        return info.cls(**values)

    def _entries(
        self, raw: Any, info: mi.DictType, value_annotation: Any, path: KeyPath, current: dict[str, Any]
    ) -> Any:
        if raw is None:
            return current
        if not isinstance(raw, dict):
            self.fail(path, f"expected a mapping of names to settings, got {_describe(raw)}")
            return _INVALID
        noun = str(path[-1]).removesuffix("s") if path else "name"
        fresh: Callable[[], Any] | None = None
        if isinstance(info.key_type, mi.LiteralType):
            # A closed set of names (fleet.agents): the file's mapping replaces the default one.
            names: list[Any] = list(info.key_type.values)
            result: dict[Any, Any] = {}
        elif isinstance(info.value_type, mi.StructType) and _open_mapping(info.value_type, info.key_type):
            # Any name may be added (quality.policies, tools.<name>.modes); each entry stands alone and
            # replaces a default entry of the same name.
            names = []
            result = dict(current)
            fresh = _fresh(info.value_type)
        else:
            # Only names that have a default entry exist; an entry overrides some fields of that default.
            names = list(current)
            result = dict(current)
        pattern = getattr(info.key_type, "pattern", None)
        for key, entry in raw.items():
            if (fresh is None and key not in names) or not isinstance(key, str):
                self._unknown(path, key, [str(n) for n in names], noun)
                result[key] = _INVALID
            elif pattern is not None and not re.search(pattern, key):
                self.fail((*path, key), f"`{key}` is not a valid {noun} name: it must match {pattern}")
                result[key] = _INVALID
            else:
                base = fresh() if fresh is not None else current.get(key)
                result[key] = self.decode(entry, value_annotation, (*path, key), base)
        if any(value is _INVALID for value in result.values()):
            return _INVALID
        return result

    def _list(self, raw: Any, item_annotation: Any, path: KeyPath) -> Any:
        if raw is None:  # every item commented out
            return ()
        if not isinstance(raw, list):
            self.fail(path, f"expected a list (`- item` lines or [a, b]), got {_describe(raw)}")
            return _INVALID
        items = tuple(self.decode(item, item_annotation, (*path, i), None) for i, item in enumerate(raw))
        return _INVALID if any(item is _INVALID for item in items) else items

    def _scalar(self, raw: Any, annotation: Any, path: KeyPath, current: Any) -> Any:
        # msgspec decides (type and the limits annotated on it); the message is worded here, from the same
        # annotation. An optional value (a policy threshold) takes null as unset.
        try:
            value = msgspec.convert(raw, annotation)
        except msgspec.ValidationError:
            value = _INVALID
        if value is _INVALID or (isinstance(value, float) and not math.isfinite(value)):
            self.fail(path, _leaf_problem(raw, annotation, path, current))
            return _INVALID
        return value

    def _unknown(self, path: KeyPath, key: Any, choices: list[str], noun: str) -> None:
        if not isinstance(key, str):
            self.fail((*path, str(key)), f"a {noun} must be a name, got {_describe(key)}")
            return
        guess = _closest(key, choices)
        hint = f"did you mean `{guess}`?" if guess else f"expected one of: {', '.join(choices)}"
        self.fail((*path, key), f"unknown {noun} `{key}`; {hint}")


def _open_mapping(value: mi.StructType, key: mi.Type) -> bool:
    """Named entries of a struct whose every field has a default, or whose names the schema constrains by a
    pattern (tools.<name>.modes): any name can be defined."""
    return not any(field.required for field in value.fields) or getattr(key, "pattern", None) is not None


def _fresh(value: mi.StructType) -> Callable[[], Any]:
    """A new entry's starting point: its defaults, or None when it has required keys (each must be given)."""
    if any(field.required for field in value.fields):
        return lambda: None
    return value.cls


def _bare(annotation: Any) -> Any:
    """The annotation without its Annotated layers (limits, descriptions)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


# Both resolve annotations from scratch on every call; a file asks again for the same few dozen.
_fields: Final = functools.cache(msgspec.structs.fields)


@functools.cache
def _info(annotation: Any) -> mi.Type:
    info = mi.type_info(annotation)
    return info.type if isinstance(info, mi.Metadata) else info  # a described field: the type inside


def _leaf_problem(raw: Any, annotation: Any, path: KeyPath, current: Any) -> str:
    """Why msgspec refused `raw` for this leaf: the wrong kind of value, or one outside the annotated limits."""
    info = _info(annotation)
    words: list[str] = []  # a number or a word, e.g. server.workers: 4 or `auto`
    if isinstance(info, mi.UnionType):  # an optional value: the problem is with its non-null member
        words = [str(v) for m in info.types if isinstance(m, mi.LiteralType) for v in m.values]
        info = next(member for member in info.types if not isinstance(member, mi.NoneType))
    bare = _bare(annotation)
    if get_origin(bare) in (Union, UnionType):
        bare = _bare(next(member for member in get_args(bare) if member is not type(None)))
    try:
        msgspec.convert(raw, bare)
    except msgspec.ValidationError:
        problem = _type_problem(raw, info, path, current)
        if words:
            alternatives = " or ".join(f"`{word}`" for word in words)
            problem = problem.replace("expected an integer", f"expected an integer or {alternatives}", 1)
        return problem
    return _range_problem(raw, info)


def _type_problem(raw: Any, info: mi.Type, path: KeyPath, current: Any) -> str:
    if isinstance(info, mi.LiteralType):
        choices = [str(value) for value in info.values]
        guess = _closest(raw, choices) if isinstance(raw, str) else None
        shown = f"`{raw}`" if isinstance(raw, str) else _describe(raw)
        if guess:
            return f"unknown {path[-1]} {shown}; did you mean `{guess}`? (choices: {', '.join(choices)})"
        return f"unknown {path[-1]} {shown}; expected one of: {', '.join(choices)}"
    problem = f"expected {_expected(info, path)}, got {_describe(raw)}"
    if raw is None and current is not None:
        default = msgspec.json.encode(current).decode()
        problem += f"; give a value, or delete the line to use the default ({default})"
    elif isinstance(raw, str) and isinstance(info, mi.IntType | mi.FloatType) and _is_number(raw):
        problem += "; remove the quotes"
    return problem


def _expected(info: mi.Type, path: KeyPath) -> str:
    if isinstance(info, mi.IntType):
        return "an integer number of milliseconds" if str(path[-1]).endswith("Ms") else "an integer"
    if isinstance(info, mi.FloatType):
        return "a number"
    if isinstance(info, mi.BoolType):
        return "true or false"
    return "a string"


def _range_problem(raw: Any, info: mi.Type) -> str:
    """The limit annotated on the leaf that `raw` breaks, in words."""
    if isinstance(info, mi.StrType):
        assert info.min_length == 1 and not raw, f"no words for the limits of {info!r}"
        return "must not be empty"
    if isinstance(raw, float) and not math.isfinite(raw):
        return f"must be a finite number, got {raw}"
    assert isinstance(info, mi.IntType | mi.FloatType), f"no limits to word for {info!r}"
    low, high = info.ge, info.le
    if low is not None and high is not None:
        if (low, high) == (0, 1):
            return f"must be a fraction between 0 and 1 (0.9 means 90%), got {raw}"
        return f"must be between {low} and {high}, got {raw}"
    if info.gt is not None:
        return f"must be greater than {info.gt}, got {raw}"
    return f"must be at least {low}, got {raw}"


def _check_server(checker: _Checker, server: _Decoded) -> None:
    _check_exposure(checker, server)
    origins = server.values["allowed_origins"]
    if origins is not _INVALID:
        for index, origin in enumerate(origins):
            if not _is_origin(origin):
                checker.fail((*server.path, "allowedOrigins", index),
                             f"`{origin}` is not an origin; write scheme://host[:port] with no path, "
                             "e.g. `https://app.example.com`")
    proxies = server.values["trusted_proxies"]
    if proxies is not _INVALID:
        for index, proxy in enumerate(proxies):
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                checker.fail((*server.path, "trustedProxies", index),
                             f"`{proxy}` is not an IP address or network; write e.g. `127.0.0.1/32` or `10.0.0.0/8`")
    sock = server.values["control_socket"]
    if sock is not _INVALID and len(os.fsencode(sock)) > MAX_SOCKET_PATH_BYTES:
        checker.fail((*server.path, "controlSocket"),
                     f"is {len(os.fsencode(sock))} bytes long; unix socket paths are limited to "
                     f"{MAX_SOCKET_PATH_BYTES} bytes, so choose a shorter path")


def _check_exposure(checker: _Checker, server: _Decoded) -> None:
    host, auth = server.values["host"], server.values["auth"]
    if host is _INVALID or auth is _INVALID or is_loopback(host) or auth.enabled or auth.allow_unauthenticated:
        return
    checker.fail((*server.path, "host"),
                 f"`{host}` is not a loopback address and server.auth names no tokens, so anyone who can reach "
                 "the port could call the tools; set server.auth.tokensFile (or tokensEnv), or, when a proxy in "
                 "front authenticates clients, server.auth.allowUnauthenticated: true")


def _check_auth(checker: _Checker, auth: _Decoded) -> None:
    values = auth.values
    if values["protect_metrics"] is True and not values["tokens_file"] and not values["tokens_env"]:
        checker.fail((*auth.path, "protectMetrics"),
                     "needs tokens to check: set tokensFile or tokensEnv too, or leave protectMetrics false")
    env = values["tokens_env"]
    if env not in (_INVALID, "") and not _ENV_NAME.fullmatch(env):
        checker.fail((*auth.path, "tokensEnv"),
                     f"`{env}` is not an environment variable name; write the name (e.g. AQE_MCP_TOKENS), "
                     "never the token itself")


def _is_origin(text: str) -> bool:
    parts = urlsplit(text)
    return (
        parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/")
        and not parts.query and not parts.fragment and parts.username is None
    )


def _check_pool(checker: _Checker, pool: _Decoded) -> None:
    low, high = pool.values["min_connections"], pool.values["max_connections"]
    if low is _INVALID or high is _INVALID or low <= high:
        return
    only_max_given = "max_connections" in pool.given and "min_connections" not in pool.given
    key = "maxConnections" if only_max_given else "minConnections"
    checker.fail((*pool.path, key), f"minConnections ({low}) is larger than maxConnections ({high}); "
                                    "lower minConnections or raise maxConnections")


def _check_fleet(checker: _Checker, fleet: _Decoded) -> None:
    lease, beat = fleet.values["lease_ms"], fleet.values["heartbeat_ms"]
    if lease is _INVALID or beat is _INVALID or beat * 2 <= lease:
        return
    key = "leaseMs" if "lease_ms" in fleet.given else "heartbeatMs"
    checker.fail((*fleet.path, key), f"heartbeatMs ({beat}) must be at most half of leaseMs ({lease}), so a lease "
                                     "is renewed before it runs out; lower heartbeatMs or raise leaseMs")


def _check_registry(checker: _Checker, registry: _Decoded) -> None:
    enabled, size = registry.values["cache_enabled"], registry.values["cache_size"]
    if enabled is True and size is not _INVALID and size < 1:
        checker.fail((*registry.path, "cacheSize"),
                     f"must be at least 1 while cacheEnabled is true, got {size}; raise it or set "
                     "cacheEnabled: false")


def _check_memory(checker: _Checker, memory: _Decoded) -> None:
    pattern = memory.values["namespace_pattern"]
    if pattern is _INVALID:
        return
    try:
        accepts_default = re.fullmatch(pattern, DEFAULT_NAMESPACE) is not None
    except re.error as exc:
        checker.fail((*memory.path, "namespacePattern"),
                     f"is not a valid regular expression ({exc}); write it in single quotes so YAML keeps "
                     "backslashes as they are, e.g. '[a-z0-9_-]{1,64}'")
        return
    if not accepts_default:
        checker.fail((*memory.path, "namespacePattern"),
                     f"does not accept the default namespace `{DEFAULT_NAMESPACE}`, which calls without a "
                     "namespace use; widen the pattern")


def _check_store(checker: _Checker, store: _Decoded) -> None:
    from qe_appliance.store.pgurl import url_problem

    url = store.values["url"]
    if url is _INVALID or not url:
        if store.values["password_file"] not in ("", _INVALID):
            checker.fail((*store.path, "passwordFile"), "is set but store.url is empty; give a postgresql:// url "
                                                          "or remove passwordFile")
        return
    problem = url_problem(url)
    if problem is not None:
        checker.fail((*store.path, "url"), problem)


_CHECKS: Final[dict[type, Callable[[_Checker, _Decoded], None]]] = {
    ServerConfig: _check_server,
    AuthConfig: _check_auth,
    PoolConfig: _check_pool,
    FleetConfig: _check_fleet,
    RegistryConfig: _check_registry,
    MemoryConfig: _check_memory,
    StoreConfig: _check_store,
}


def _closest(word: str, choices: list[str]) -> str | None:
    # Case, '_' and '-' are folded so `max_connections` and `MaxConnections` still find `maxConnections`.
    from rapidfuzz import fuzz, process  # only a misspelt key needs it: kept off start-up

    match = process.extractOne(word, choices, scorer=fuzz.ratio, processor=_fold, score_cutoff=70)
    return match[0] if match else None


def _fold(text: str) -> str:
    return text.lower().replace("_", "").replace("-", "")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _dotted(path: KeyPath) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"the string {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__} ({value!s:.40})"
