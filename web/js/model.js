// What the app knows about device groups, devices and events, kept current by the
// control channel's event frames.  No DOM and no socket here: views listen to
// `onChange` and the tests feed events directly (tests/model.test.js).

const MAX_EVENTS = 1000;

function byName(a, b) {
  const left = String(a.name ?? "").toLowerCase();
  const right = String(b.name ?? "").toLowerCase();
  return left < right ? -1 : left > right ? 1 : String(a._id) < String(b._id) ? -1 : 1;
}

export class DeviceModel {
  constructor() {
    this.meshes = new Map();
    this.nodes = new Map();
    this.loaded = false;
    this._listeners = new Set();
    // Device ids by group id, so a group's devices are found without walking the whole
    // fleet (5000 devices and dozens of groups).  Every change of `nodes` goes through
    // _put() and _drop(), which keep it current.
    this._byMesh = new Map();
  }

  _put(node) {
    const previous = this.nodes.get(node._id);
    if (previous && previous.meshid !== node.meshid) {
      this._byMesh.get(previous.meshid)?.delete(node._id);
    }
    this.nodes.set(node._id, node);
    let ids = this._byMesh.get(node.meshid);
    if (!ids) this._byMesh.set(node.meshid, ids = new Set());
    ids.add(node._id);
  }

  _drop(id) {
    const node = this.nodes.get(id);
    if (!node) return;
    this.nodes.delete(id);
    this._byMesh.get(node.meshid)?.delete(id);
  }

  // fn(change): change is {kind: "reset"|"mesh"|"node", id, ...}
  onChange(fn) {
    this._listeners.add(fn);
    return () => this._listeners.delete(fn);
  }

  _changed(change) {
    for (const fn of [...this._listeners]) fn(change);
  }

  // The answers of `meshes` and `nodes` (nodes grouped by group id, meshid removed).
  load(meshes, nodesByMesh) {
    this.meshes.clear();
    this.nodes.clear();
    this._byMesh.clear();
    for (const mesh of meshes || []) {
      if (mesh && typeof mesh._id === "string") this.meshes.set(mesh._id, mesh);
    }
    for (const [meshid, list] of Object.entries(nodesByMesh || {})) {
      for (const node of Array.isArray(list) ? list : []) {
        if (node && typeof node._id === "string") this._put({ ...node, meshid });
      }
    }
    this.loaded = true;
    this._changed({ kind: "reset" });
  }

  // A fresh `nodes` answer for some devices (one device's page asks for its own): the
  // records are replaced, devices of groups this model does not know are left out.
  merge(nodesByMesh) {
    const ids = [];
    for (const [meshid, list] of Object.entries(nodesByMesh || {})) {
      if (!this.meshes.has(meshid)) continue;
      for (const node of Array.isArray(list) ? list : []) {
        if (!node || typeof node._id !== "string") continue;
        const previous = this.nodes.get(node._id);
        const merged = { ...node, meshid };
        if (previous?.lastseen !== undefined && merged.lastseen === undefined) {
          merged.lastseen = previous.lastseen;
        }
        this._put(merged);
        ids.push(node._id);
      }
    }
    for (const id of ids) this._changed({ kind: "node", id });
    return ids;
  }

  groups() {
    return [...this.meshes.values()].sort(byName);
  }

  // A group's devices, in no particular order.
  nodesOf(meshid) {
    const found = [];
    for (const id of this._byMesh.get(meshid) || []) {
      const node = this.nodes.get(id);
      if (node) found.push(node);
    }
    return found;
  }

  devicesOf(meshid) {
    return this.nodesOf(meshid).sort(byName);
  }

  // Apply one event; returns what happened, for notifications:
  // {kind, id, connected?: bool, name?} or null when the event changed nothing here.
  // `reload: true` means the event refers to something this model never saw (the user
  // was just given a group, say): the caller should fetch the lists again.
  applyEvent(event) {
    if (!event || typeof event !== "object") return null;
    switch (event.action) {
      case "createmesh": {
        const mesh = event.mesh && typeof event.mesh === "object"
          ? { ...event.mesh } : { _id: event.meshid, name: event.name, mtype: event.mtype };
        if (typeof mesh._id !== "string") return null;
        this.meshes.set(mesh._id, mesh);
        return this._emit({ kind: "mesh", id: mesh._id, name: mesh.name });
      }
      case "meshchange": {
        const mesh = this.meshes.get(event.meshid);
        if (!mesh) return typeof event.meshid === "string" ? { kind: "mesh", id: event.meshid, reload: true } : null;
        for (const key of ["name", "desc", "links", "flags", "consent", "mtype"]) {
          if (event[key] !== undefined) mesh[key] = event[key];
        }
        return this._emit({ kind: "mesh", id: mesh._id, name: mesh.name });
      }
      case "deletemesh": {
        const mesh = this.meshes.get(event.meshid);
        if (!mesh) return null;
        this.meshes.delete(event.meshid);
        for (const id of [...(this._byMesh.get(event.meshid) || [])]) this._drop(id);
        this._byMesh.delete(event.meshid);
        return this._emit({ kind: "mesh", id: event.meshid, name: mesh.name, removed: true });
      }
      case "addnode": {
        const node = event.node;
        if (!node || typeof node._id !== "string") return null;
        const meshid = node.meshid ?? event.meshid;
        if (!this.meshes.has(meshid)) return { kind: "node", id: node._id, reload: true };
        const previous = this.nodes.get(node._id) || {};
        this._put({ ...previous, ...node, meshid });
        return this._emit({ kind: "node", id: node._id, name: node.name });
      }
      case "changenode": {
        const id = event.nodeid ?? event.node?._id;
        const node = this.nodes.get(id);
        if (!node || !event.node) return null;
        // Live fields (conn, pwr) only change through nodeconnect.
        const { conn, pwr, agct, ...rest } = event.node;
        Object.assign(node, rest, { meshid: node.meshid });
        return this._emit({ kind: "node", id, name: node.name });
      }
      case "nodemeshchange": {
        const id = event.nodeid ?? event.node?._id;
        const node = this.nodes.get(id);
        if (!this.meshes.has(event.newMeshId)) {
          if (node) {
            this._drop(id);
            return this._emit({ kind: "node", id, name: node.name, removed: true });
          }
          return null;
        }
        const merged = { ...(node || {}), ...(event.node || {}), meshid: event.newMeshId };
        if (typeof merged._id !== "string") return null;
        this._put(merged);
        return this._emit({ kind: "node", id: merged._id, name: merged.name });
      }
      case "removenode": {
        const node = this.nodes.get(event.nodeid);
        if (!node) return null;
        this._drop(event.nodeid);
        return this._emit({ kind: "node", id: event.nodeid, name: node.name, removed: true });
      }
      case "nodeconnect": {
        const node = this.nodes.get(event.nodeid);
        if (!node) {
          return typeof event.nodeid === "string" && this.meshes.has(event.meshid)
            ? { kind: "node", id: event.nodeid, reload: true } : null;
        }
        const wasOnline = isOnline(node.conn);
        node.conn = Number(event.conn) || 0;
        node.pwr = event.pwr;
        if (event.ct) node.agct = event.ct;
        const online = isOnline(node.conn);
        if (!online) node.lastseen = Date.now();
        const change = { kind: "node", id: node._id, name: node.name };
        if (online !== wasOnline) change.connected = online;
        return this._emit(change);
      }
      default:
        return null;
    }
  }

  _emit(change) {
    this._changed(change);
    return change;
  }
}

export function isOnline(conn) {
  return (Number(conn) & (1 | 2 | 4 | 16)) !== 0;
}

// The audit trail: newest first, the `events` answer plus live events that are logged.
export class EventLog {
  constructor(limit = MAX_EVENTS) {
    this.limit = limit;
    this.events = [];
    this._listeners = new Set();
  }

  onChange(fn) {
    this._listeners.add(fn);
    return () => this._listeners.delete(fn);
  }

  load(events) {
    this.events = (Array.isArray(events) ? events : []).filter((e) => e && typeof e === "object")
      .slice(0, this.limit);
    for (const fn of [...this._listeners]) fn({ reset: true });
  }

  // A live event: kept when it is one the server stores (it has a message, no nolog).
  add(event, now = Date.now()) {
    if (!event || typeof event !== "object" || event.nolog || !event.msg) return false;
    const entry = { ...event };
    if (entry.time === undefined) entry.time = new Date(now).toISOString();
    this.events.unshift(entry);
    if (this.events.length > this.limit) this.events.length = this.limit;
    for (const fn of [...this._listeners]) fn({ added: entry });
    return true;
  }
}
