"""lianxiao: one package per service, shared code in `services.common`."""

import sys
import warnings

# eventlet announces on import that it is in bugfix-only mode. We know, and keep domain logic out of
# eventlet for that reason (see README); the notice would otherwise bury every service's start-up log.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated", category=Warning)

# kombu looks for the optional librabbitmq C client on every new connection; a failed import is not
# cached, so each RPC paid a search of sys.path (~7 % of the gateway's CPU). We never use librabbitmq:
# `None` in sys.modules makes the probe fail at once.
sys.modules.setdefault("librabbitmq", None)  # type: ignore[arg-type]
