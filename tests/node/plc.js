// A local, in-memory did:plc directory (the official @did-plc/server 0.0.1) for the tests.
//
// Usage: node plc.js <port> [host]
// Prints one line "PLC_READY <url>" on stdout once it accepts requests, then runs until
// it gets SIGTERM/SIGINT or its stdin closes (so a crashed test runner never leaks it).
'use strict'

const { PlcServer, Database } = require('@did-plc/server')

async function main() {
  const port = Number.parseInt(process.argv[2] ?? '', 10)
  const host = process.argv[3] ?? '127.0.0.1'
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    console.error('usage: node plc.js <port> [host]')
    process.exit(2)
  }
  // Database.mock() keeps every operation in a JS object: nothing touches disk or Postgres.
  const db = Database.mock()
  const server = PlcServer.create({ db, port, version: '0.0.1-test' })
  // PlcServer.start() listens on all interfaces; listening ourselves keeps the directory on
  // loopback only, with the same express app and the same request handling.
  await new Promise((resolve, reject) => {
    const http = server.app.listen(port, host)
    http.once('listening', resolve)
    http.once('error', reject)
    server.server = http
  })
  const url = `http://${host}:${port}`
  process.stdout.write(`PLC_READY ${url}\n`)

  let stopping = false
  const stop = () => {
    if (stopping) return
    stopping = true
    server.server.close(() => process.exit(0))
    // Keep-alive sockets can hold close() open; the directory is throwaway, so don't wait.
    setTimeout(() => process.exit(0), 500).unref()
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  process.stdin.on('end', stop)
  process.stdin.on('close', stop)
  process.stdin.resume()
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
