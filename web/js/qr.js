// A QR code as an SVG element built through the DOM (no markup strings, no inline style),
// from qrcode-generator (web/vendor/qrcode, loaded on first use).  qrPath is pure
// (tests/qr.test.js).

const SVG = "http://www.w3.org/2000/svg";
export const QUIET_ZONE = 4;  // modules of light margin the QR specification asks for

let library = null;

function load() {
  library ??= import("../vendor/qrcode/qrcode.mjs").then((module) => module.default,
    (error) => {
      library = null;
      throw error;
    });
  return library;
}

// The SVG path data drawing the dark modules of a size×size code, one unit per module,
// offset by the quiet zone; runs of dark modules in a row become one rectangle.
export function qrPath(size, isDark, margin = QUIET_ZONE) {
  const parts = [];
  for (let row = 0; row < size; row++) {
    let col = 0;
    while (col < size) {
      if (!isDark(row, col)) {
        col++;
        continue;
      }
      const start = col;
      while (col < size && isDark(row, col)) col++;
      parts.push(`M${start + margin} ${row + margin}h${col - start}v1h${start - col}z`);
    }
  }
  return parts.join("");
}

// An <svg> showing `text` as a QR code (error correction level M, smallest version).
export async function qrSvg(text, { label = "QR code", doc = globalThis.document } = {}) {
  const qrcode = await load();
  const code = qrcode(0, "M");
  code.addData(String(text));
  code.make();
  const size = code.getModuleCount();
  const extent = size + 2 * QUIET_ZONE;
  const svg = doc.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${extent} ${extent}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  svg.setAttribute("shape-rendering", "crispEdges");
  svg.setAttribute("class", "qr-code");
  svg.dataset.modules = String(size);
  const title = doc.createElementNS(SVG, "title");
  title.textContent = label;
  const background = doc.createElementNS(SVG, "rect");
  background.setAttribute("class", "qr-light");
  background.setAttribute("width", String(extent));
  background.setAttribute("height", String(extent));
  const modules = doc.createElementNS(SVG, "path");
  modules.setAttribute("class", "qr-dark");
  modules.setAttribute("d", qrPath(size, (row, col) => code.isDark(row, col)));
  svg.append(title, background, modules);
  return svg;
}
