# The patrol page (web/patrol/, issue 16) and its real-browser tests. Included by the top-level Makefile.

.PHONY: web-deps test-web

# Debian's chromium (built with its ffmpeg: H.264 and Opus in fMP4 play through MSE, checked by
# tests/web) is the browser the tests drive through Playwright (`executable_path`, no browser download);
# a CJK font so screenshots show the page's Chinese labels; nodejs/npm install hls.js from web/package-lock.json.
system-deps::
	@command -v chromium >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 \
		&& fc-list 2>/dev/null | grep -qi wenquanyi || { apt-get update && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y --no-install-recommends chromium fonts-dejavu-core fonts-wqy-microhei npm; }

# hls.js exactly as web/package-lock.json pins it, copied where nginx serves it (/patrol/vendor/).
WEB_VENDOR := web/patrol/vendor/hls.min.js
$(WEB_VENDOR): web/package.json web/package-lock.json
	@command -v npm >/dev/null 2>&1 || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y npm; }
	cd web && npm ci --no-audit --no-fund --silent
	mkdir -p $(dir $(WEB_VENDOR))
	cp web/node_modules/hls.js/dist/hls.min.js $(WEB_VENDOR)

web-deps: $(WEB_VENDOR) ## Install hls.js for the patrol page from web/package-lock.json (npm ci)

run test test-containers: web-deps

test-web: deps system-deps web-deps ## The playback and patrol page tests: real nginx, ffmpeg, headless Chromium
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/web
