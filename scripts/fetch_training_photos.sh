#!/usr/bin/env bash
# Collects the photographs the bundled models were trained on into DIR (default ./training-photos):
# scikit-image's and scikit-learn's sample photographs (from their wheels on PyPI) and the nature
# photographs of Debian's mate-backgrounds package. chelsea and coffee are left out on purpose:
# the tests check the bundled models on photographs they never saw.
set -euo pipefail
out="${1:-training-photos}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$tmp"
"${PYTHON:-python3}" -m pip download -q --no-deps scikit-image==0.26.0 scikit-learn==1.9.1 -d .
for w in scikit_image-*.whl scikit_learn-*.whl; do
  "${PYTHON:-python3}" -m zipfile -e "$w" wheel
done
for f in astronaut.png rocket.jpg motorcycle_left.png hubble_deep_field.jpg; do
  cp "wheel/skimage/data/$f" "$out/"
done
cp wheel/sklearn/datasets/images/china.jpg wheel/sklearn/datasets/images/flower.jpg "$out/"
apt-get download mate-backgrounds >/dev/null 2>&1
dpkg-deb -x mate-backgrounds_*.deb deb
cp deb/usr/share/backgrounds/mate/nature/*.jpg "$out/"
ls "$out" | wc -l | xargs echo "photographs in $out:"
