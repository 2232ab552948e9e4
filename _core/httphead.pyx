# cython: boundscheck=False, wraparound=False
"""The httptools callbacks an HTTP request makes once per URL piece, header line and body piece, in C.

httptools calls them on the protocol object it parses for; here they are methods of a base class of the
protocol (qe_appliance.http.server.HttpProtocol), so each is a C call instead of a Python frame. They only
collect and count against the limits; the protocol decides everything else. A limit passed is raised as
what the protocol's `_header_limit`, `_too_many_fields` or `_body_limit` returns.
"""

# Header fields one request may carry (Apache's LimitRequestFields default): clients send about ten.
MAX_HEADER_FIELDS = 100
# What a header line costs on the wire beyond its name and value: ": " and CRLF.
HEADER_LINE_OVERHEAD = 4

cdef Py_ssize_t _MAX_FIELDS = MAX_HEADER_FIELDS
cdef Py_ssize_t _LINE_OVERHEAD = HEADER_LINE_OVERHEAD

# Field names as sent -> lower-cased text: clients send the same dozen names on every request, so each is
# decoded once. Bounded: names a client makes up past the bound are decoded each time instead.
cdef dict _NAMES = {}
cdef Py_ssize_t _MAX_NAMES = 512


# Request methods as sent -> text, for the methods HTTP defines (others are decoded per request).
cdef dict _METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")}


cdef class Request:
    """One parsed HTTP request: method, path and query as text, headers lower-cased (see decode_headers),
    the names sent more than once, the whole body, the peer, and whether the connection stays open."""

    cdef readonly str method
    cdef readonly str path
    cdef readonly str query
    cdef readonly dict headers
    cdef readonly frozenset duplicated
    cdef readonly bytes body
    cdef readonly object client
    cdef readonly bint keep_alive

    def __init__(self, str method, str path, str query, dict headers, frozenset duplicated, bytes body,
                 object client, bint keep_alive):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.duplicated = duplicated
        self.body = body
        self.client = client
        self.keep_alive = keep_alive

    def __repr__(self):
        return f"Request({self.method} {self.path!r}, {len(self.body)} body bytes)"


cdef str _name_of(bytes raw):
    cdef object name = _NAMES.get(raw)
    if name is None:
        name = raw.decode("latin-1").lower()
        if len(_NAMES) < _MAX_NAMES:
            _NAMES[raw] = name
    return <str>name


cdef class HeadReader:
    """The request being read: its URL, raw header lines and body pieces, and what its head has cost."""

    cdef public bytes _url
    cdef public list _raw_headers
    cdef public Py_ssize_t _header_bytes
    cdef public list _body
    cdef public Py_ssize_t _body_len
    # The request being read awaits 100 Continue (cleared once its body arrives).
    cdef public bint _expects_continue
    # The limits in force (the protocol sets them from its Limits before each request).
    cdef public Py_ssize_t max_header_bytes
    cdef public Py_ssize_t max_body_bytes

    def __cinit__(self, *args, **kwargs):
        self._url = b""
        self._raw_headers = []
        self._body = []
        self.max_header_bytes = 64 * 1024
        self.max_body_bytes = 4 * 1024 * 1024

    def _reset_head(self):
        """Forget the previous request: a new one begins."""
        self._url = b""
        self._raw_headers = []
        self._header_bytes = 0
        self._body = []
        self._body_len = 0

    def on_url(self, bytes url):
        self._url = url if not self._url else self._url + url
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            raise self._header_limit()

    def on_header(self, bytes name, bytes value):
        # Only collect here; decoding happens once per request (decode_headers).
        self._raw_headers.append((name, value))
        self._header_bytes += len(name) + len(value) + _LINE_OVERHEAD
        if self._header_bytes > self.max_header_bytes:
            raise self._header_limit()
        if len(self._raw_headers) > _MAX_FIELDS:
            raise self._too_many_fields()

    def on_body(self, bytes body):
        self._expects_continue = False  # the body is on its way already
        self._body_len += len(body)
        if self._body_len > self.max_body_bytes:
            raise self._body_limit()
        self._body.append(body)

    def framing(self):
        """(Content-Length, whether a Transfer-Encoding announces a body, the Expect value lower-cased or None):
        what decides about a request's body before it arrives. Of a repeated field, the last counts."""
        cdef object length = 0
        cdef bint body_follows = False
        cdef object expect = None
        cdef tuple pair
        cdef str key
        cdef bytes value
        for pair in self._raw_headers:
            key = _name_of(<bytes>pair[0])
            value = <bytes>pair[1]
            if key == "content-length" and value.strip().isdigit():
                length = int(value)
            elif key == "transfer-encoding":
                body_follows = True
            elif key == "expect":
                expect = value.strip().lower()
        return length, body_follows, expect

    # The refusal for each limit passed: the protocol's own (an HTTP status and a message), defined there.
    def _header_limit(self):
        raise NotImplementedError

    def _too_many_fields(self):
        raise NotImplementedError

    def _body_limit(self):
        raise NotImplementedError

    def take_request(self, bytes method, object client, bint keep_alive):
        """The request just read, as a Request. Its target is a bare path here (as clients send it); any other
        target the caller takes apart (None then)."""
        cdef bytes target = self._url
        if target[:1] != b"/" or b"?" in target or b"#" in target:
            return None
        cdef object name = _METHODS.get(method)
        headers, duplicated = self.decode_headers()
        return Request(method.decode("latin-1") if name is None else <str>name, target.decode("latin-1"), "",
                       headers, duplicated, self._body[0] if len(self._body) == 1 else b"".join(self._body),
                       client, keep_alive)

    def decode_headers(self):
        """(headers, duplicated): names lower-cased, values as latin-1 text, a repeated field's values joined
        with ", " (RFC 9110 5.3), and the set of names that were repeated."""
        cdef dict headers = {}
        cdef dict repeated = None
        cdef tuple pair
        cdef str key, text
        for pair in self._raw_headers:
            key = _name_of(<bytes>pair[0])
            text = (<bytes>pair[1]).decode("latin-1")
            if key in headers:
                # Joined once at the end: appending to the joined string would copy it per repeat.
                if repeated is None:
                    repeated = {}
                if key not in repeated:
                    repeated[key] = [headers[key]]
                repeated[key].append(text)
            else:
                headers[key] = text
        if repeated is None:
            return headers, _NONE
        for key, values in repeated.items():
            headers[key] = ", ".join(values)
        return headers, frozenset(repeated)


cdef frozenset _NONE = frozenset()
