// Test helper: a TCP proxy in front of the server that can cut every connection (a network
// failure: the client sees an abnormal close, not a WebSocket close frame) and can swallow
// what the server sends (a reply lost on the way).

import net from 'node:net';

export class CuttableProxy {
  /** @param {number} targetPort */
  constructor(targetPort) {
    this.targetPort = targetPort;
    /** Drop bytes from the server to the client while true. */
    this.muteDown = false;
    /** @type {Set<net.Socket>} */
    this.sockets = new Set();
    this.server = net.createServer((client) => {
      const upstream = net.connect(this.targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => {});
      }
      client.on('data', (d) => upstream.write(d));
      upstream.on('data', (d) => {
        if (!this.muteDown) client.write(d);
      });
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
  }

  /** @returns {Promise<string>} the proxy's base URL */
  listen() {
    return new Promise((resolve) => {
      this.server.listen(0, '127.0.0.1', () => {
        this.port = /** @type {net.AddressInfo} */ (this.server.address()).port;
        resolve(`http://127.0.0.1:${this.port}`);
      });
    });
  }

  /** Destroys every proxied connection at once. */
  cut() {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  close() {
    this.cut();
    return new Promise((r) => this.server.close(() => r()));
  }
}
