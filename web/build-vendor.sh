#!/bin/sh
# Build web/vendor/ from the versions pinned in web/package-lock.json (npm ci).
#
#   sh web/build-vendor.sh
#
# Run by the package build (setup.py) and by .ci/run; neither web/vendor/ nor
# web/node_modules/ is committed.  Only each library's own built, distributed files and
# its LICENSE (from licenses/ for a package whose tarball has none) are copied;
# tests/test_web_js.py checks that the copies are byte-identical to the locked packages.  A built wheel carries web/vendor/ as package data, so
# installing it needs no Node.
set -eu
cd "$(dirname "$0")"
npm ci --ignore-scripts --no-audit --no-fund
copy() {  # package, destination folder, files...
    package=$1 folder=vendor/$2
    shift 2
    rm -rf "$folder"
    mkdir -p "$folder"
    for file in "$@"; do
        cp "node_modules/$package/$file" "$folder/"
    done
    # A package whose npm tarball carries no LICENSE has its licence text in licenses/.
    if [ -e "licenses/$package.LICENSE" ]; then
        cp "licenses/$package.LICENSE" "$folder/LICENSE"
    else
        cp "node_modules/$package/LICENSE" "$folder/"
    fi
}
# The list below is the same as VENDOR_FILES in tests/test_web_js.py.
copy @xterm/xterm xterm lib/xterm.mjs css/xterm.css
copy @xterm/addon-fit addon-fit lib/addon-fit.mjs
copy qrcode-generator qrcode dist/qrcode.mjs
