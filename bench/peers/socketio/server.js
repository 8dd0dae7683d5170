// The Socket.IO peer of `hubbub bench fanout`: every receiver joins room "r"; a `pub` event
// from a publisher (connected with ?role=pub, not in the room) is broadcast to the room as
// `msg`. WebSocket transport only, no compression, loopback only. Usage: node server.js PORT
"use strict";
const http = require("http");
const { Server } = require("socket.io");

const port = Number(process.argv[2] || process.env.PORT || 3000);
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ["websocket"],
  perMessageDeflate: false,
  serveClient: false,
});

io.on("connection", (socket) => {
  if (socket.handshake.query.role !== "pub") {
    socket.join("r");
  }
  socket.on("pub", (payload) => {
    io.to("r").emit("msg", payload);
  });
});

httpServer.listen(port, "127.0.0.1", () => {
  const version = require("socket.io/package.json").version;
  console.log(`socket.io ${version} listening on 127.0.0.1:${port}`);
});
process.on("SIGTERM", () => io.close(() => process.exit(0)));
