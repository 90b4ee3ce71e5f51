# Containers (issue 17): the base image without a registry, the image, the stack under podman, and
# `make test-containers`. Included by the top-level Makefile (which defines PY, VENV and STAMP).

# The development venv installs requirements.lock, which starts with `-r requirements-runtime.lock`.
$(STAMP): requirements-runtime.lock

.PHONY: containers-host
## podman, podman-compose, buildah, debootstrap, runc from Debian and podman's settings for this machine
## class (runtime runc, default_ulimits): deploy/containers/podman-host-setup.sh says what it changes.
containers-host:
	deploy/containers/podman-host-setup.sh
