"""Gateway errors: bad configuration, unknown backends or routes, and failed admin calls."""

from __future__ import annotations

from granary.errors import ServeError


class GatewayConfigError(ServeError, ValueError):
    """A gateway configuration is malformed; names the file, the field and what to change."""

    def __init__(self, field: str, reason: str, *, source: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field} {reason}",
                         hint="fix the gateway config (see docs/serve.md, 'Configuration') and start again")

    def located(self, source: str) -> GatewayConfigError:
        """The same error, naming the file it came from."""
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.source = source
        new.args = (f"{source}: {self.field} {self.reason}",)
        return new


class UnknownPolicyError(GatewayConfigError):
    """A route names a balancing policy that is not registered."""

    def __init__(self, name: str, known: list[str], *, field: str = "policy", source: str | None = None) -> None:
        self.name = name
        super().__init__(field, f"names the unknown policy {name!r}; known policies: {', '.join(known)}",
                         source=source)


class BackendNotFoundError(ServeError, LookupError):
    """No backend of that name is known to the gateway."""

    def __init__(self, name: str, route: str | None = None) -> None:
        self.name = name
        self.route = route
        where = f" on route {route!r}" if route else ""
        super().__init__(f"no backend {name!r}{where}", hint="list backends with `granary gateway backend list`")


class GatewayUnreachableError(ServeError):
    """The gateway's admin endpoint could not be reached or refused the call."""

    def __init__(self, url: str, reason: str, *, hint: str | None = None) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"gateway admin at {url}: {reason}",
                         hint=hint or "is the gateway running? start it with `granary gateway up --config FILE`")
