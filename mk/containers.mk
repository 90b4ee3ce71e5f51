# Containers (issue 17): the base image without a registry, the image, the stack under podman, and
# `make test-containers`. Included by the top-level Makefile (which defines PY, VENV and STAMP).

# The development venv installs requirements.lock, which starts with `-r requirements-runtime.lock`.
$(STAMP): requirements-runtime.lock

.PHONY: containers-host
# deploy/containers/podman-host-setup.sh says what it changes (runtime runc, default_ulimits).
containers-host: ## podman, podman-compose, buildah, debootstrap, runc from Debian, and podman's settings for this machine
	deploy/containers/podman-host-setup.sh

.PHONY: test-containers containers-clean
# Base image without a registry, application and infrastructure images, the stack on 127.0.0.1, /readyz,
# demo, teachers, RTP to a branch; removed after. Prints build times, sizes, start to /readyz.
test-containers: deps system-deps containers-host ## The whole platform in containers under podman (bounded: 10 min after packages)
	timeout --kill-after=20 600 deploy/containers/test-containers.sh

containers-clean: ## Remove the images test-containers builds (the stacks remove themselves)
	-podman rmi --force localhost/lianxiao:local localhost/lianxiao-infra:local localhost/lianxiao-base:bookworm
