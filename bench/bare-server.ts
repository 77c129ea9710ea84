/**
 * The serving baseline: a bare node:http server that answers every request with the bytes the
 * broker answered `GET /token` with, and the same headers that describe them. Whatever the
 * broker spends beyond this is the broker's own cost. Prints its port, then serves until killed.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";

const body = Buffer.from(process.argv[2] ?? "{}", "utf8");
const headers = {
  "content-type": "application/json; charset=utf-8",
  "content-length": String(body.length),
  "cache-control": "no-store",
};
const server = http.createServer((_req, res) => {
  res.writeHead(200, headers);
  res.end(body);
});
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${(server.address() as AddressInfo).port}\n`);
});
