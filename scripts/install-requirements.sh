#!/bin/sh
# Inside the image build only (Dockerfile): install requirements/<NAME>.in into /opt/venv,
# pinned by requirements/constraints.txt, wheels only. With --final, also leave pip out of the
# venv and drop what is only needed to build against or test the libraries (C++ headers, test
# suites), so that the runtime image holds nothing to build or install with.
#
#   install-requirements.sh base            # the layer both images share (TensorFlow & co.)
#   install-requirements.sh train --final   # then each image's own
#
# Behind a TLS-inspecting proxy the CA bundle comes as the BuildKit secret `pip_cert`
# (/run/secrets/pip_cert, used by pip only, never stored in a layer).
set -eu
name="$1"
if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi
/opt/venv/bin/pip install -r "/tmp/requirements/$name.in" -c /tmp/requirements/constraints.txt
if [ "${2:-}" = --final ]; then
  /opt/venv/bin/pip uninstall -y -q pip
  cd /opt/venv/lib/python3*/site-packages
  rm -rf tensorflow/include pyarrow/include
  for pkg in numpy pandas scipy sklearn pyarrow matplotlib; do
    if [ -d "$pkg" ]; then find "$pkg" -depth -type d -name tests -exec rm -rf {} +; fi
  done
fi
