# Sourced by the bench/gpu_*_session.sh scripts: the GPU image lacks the server's dependencies (fastapi,
# uvicorn, pydantic-settings, openai, llguidance ...). Carry them as wheels in .whl (built here with
# `pip download --only-binary=:all: --python-version 3.12 -d .whl ...`, see the device README) and this
# installs them under /tmp/site, then sets SITE to that folder (empty without
# wheels) and PYTHONPATH to the repository and SITE.
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_env: installing .whl failed" >&2; exit 1; }
  SITE=/tmp/site
else
  SITE=
fi
export PYTHONPATH=$PWD${SITE:+:$SITE}
