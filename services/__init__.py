"""lianxiao: one package per service, shared code in `services.common`."""

import warnings

# eventlet announces on import that it is in bugfix-only mode. We know, and keep domain logic out of
# eventlet for that reason (see README); the notice would otherwise bury every service's start-up log.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated", category=Warning)
