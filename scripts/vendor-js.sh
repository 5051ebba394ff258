#!/usr/bin/env bash
# Re-vendor the JavaScript the published book needs offline (no CDN at read time):
# the ipywidgets HTML manager + require.js (widget state in executed notebooks) and MathJax 3 (equations).
# Needs npm and the npm registry; the result is committed under _vendor/ so building the book never needs npm.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @jupyter-widgets/html-manager@1.0.6 requirejs@2.3.4 mathjax@3.2.2 >/dev/null)
for f in "$tmp"/*.tgz; do mkdir -p "${f%.tgz}"; tar xzf "$f" -C "${f%.tgz}"; done
rm -rf _vendor/widgets _vendor/mathjax
mkdir -p _vendor/widgets _vendor/mathjax/output/chtml/fonts
cp "$tmp"/jupyter-widgets-html-manager-1.0.6/package/dist/embed-amd.js \
   "$tmp"/jupyter-widgets-html-manager-1.0.6/package/dist/embed.js.LICENSE.txt _vendor/widgets/
cp "$tmp"/requirejs-2.3.4/package/require.js _vendor/widgets/
cp "$tmp"/mathjax-3.2.2/package/es5/tex-mml-chtml.js "$tmp"/mathjax-3.2.2/package/LICENSE _vendor/mathjax/
cp -r "$tmp"/mathjax-3.2.2/package/es5/output/chtml/fonts/woff-v2 _vendor/mathjax/output/chtml/fonts/
(cd _vendor && find . -name '*.js' | sort | xargs sha256sum) > _vendor/SHA256SUMS
echo "vendored into _vendor/ (checksums in _vendor/SHA256SUMS)"
