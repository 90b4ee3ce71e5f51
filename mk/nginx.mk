# nginx from Debian: the buffering reverse proxy in front of the gateway (make run, tests; issue 12 item 3).
# Included by the top-level Makefile.
system-deps::
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nginx-light; }
