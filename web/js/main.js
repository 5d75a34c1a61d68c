// Entry point in the browser: read the page's bootstrap data, start the app with the
// browser's own WebSocket.
import { controlUrl } from "./control.js";
import { startApp } from "./app.js";

const data = document.getElementById("bootstrap");
let bootstrap = {};
try {
  bootstrap = JSON.parse(data ? data.textContent : "{}") || {};
} catch (error) {
  bootstrap = {};
}
globalThis.meshd = startApp({
  root: document.getElementById("app"),
  bootstrap,
  createWebSocket: (url) => new WebSocket(url),
  url: controlUrl(window.location),
  location: window.location,
});
