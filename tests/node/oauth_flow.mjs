// End to end OAuth: the official @atproto/oauth-client-node as the app (a loopback
// development client), headless Debian chromium (playwright-core) as the person on the
// PDS's own sign-in page, @atproto/api with the resulting DPoP session.
//
//   node oauth_flow.mjs --pds http://localhost:PORT --handle H --password P --shots DIR
//                       [--maildir DIR --email ADDRESS]
//
// With --maildir (the tests' SMTP server saves each message there) the account has
// emailed sign-in codes on: after the password the page asks for the code, which is read
// from the mail (a wrong one first, refused), and screenshots of that step are taken.
//
// Run by tests/test_oauth_e2e.py. Prints one JSON line of findings at the end.

import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import http from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import api from '@atproto/api'
import { NodeOAuthClient } from '@atproto/oauth-client-node'
import { chromium } from 'playwright-core'

import { args, mailTokens, main, nthMailToken, step } from './util.mjs'

const { Agent } = api
const opts = args({ pds: 'PDS_URL', handle: null, password: null, shots: null, maildir: null,
  email: null })

/** A callback server on loopback: resolves each redirect's query parameters. */
function callbackServer() {
  const waiting = []
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1')
    res.writeHead(200, { 'content-type': 'text/html' })
    res.end('<!doctype html><title>Signed in</title><p>You can close this window.</p>')
    const next = waiting.shift()
    if (next) next(url.searchParams)
  })
  return {
    server,
    next: () => new Promise((resolve) => waiting.push(resolve)),
    listen: () => new Promise((resolve) => server.listen(0, '127.0.0.1', () =>
      resolve(server.address().port))),
  }
}

function memoryStore() {
  const map = new Map()
  return {
    map,
    async get(key) { return map.get(key) },
    async set(key, value) { map.set(key, value) },
    async del(key) { map.delete(key) },
  }
}

/** DID documents from the PDS itself (did:web hosts on `.test` names don't resolve). */
function pdsDidResolver(pds) {
  return {
    async resolve(did) {
      const r = await fetch(`${pds}/xrpc/com.atproto.repo.describeRepo?repo=${did}`)
      if (!r.ok) throw new Error(`describeRepo ${did}: ${r.status}`)
      return (await r.json()).didDoc
    },
  }
}

function makeClient(pds, port, sessionStore) {
  const redirect = `http://127.0.0.1:${port}/callback`
  const scope = 'atproto transition:generic'
  const clientId = `http://localhost?redirect_uri=${encodeURIComponent(redirect)}` +
    `&scope=${encodeURIComponent(scope)}`
  return new NodeOAuthClient({
    clientMetadata: {
      client_id: clientId, redirect_uris: [redirect], scope,
      grant_types: ['authorization_code', 'refresh_token'], response_types: ['code'],
      token_endpoint_auth_method: 'none', application_type: 'native',
      dpop_bound_access_tokens: true,
    },
    allowHttp: true,
    stateStore: memoryStore(),
    sessionStore,
    handleResolver: pds,
    didResolver: pdsDidResolver(pds),
  })
}

async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'pds-oauth-chromium-'))
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 420, height: 860 },
  })
  return { browser, profile }
}

/** The person's part: sign in (unless remembered), look, authorize. */
async function consent(page, url, shots, first) {
  await page.goto(url)
  if (first) {
    await page.getByRole('heading', { name: 'Sign in' }).waitFor()
    await page.getByLabel('Handle or email').fill(opts.handle)
    await page.getByLabel('Password').fill(opts.password)
    await page.getByLabel('Remember this device').check()
    await page.screenshot({ path: join(shots, 'oauth-sign-in.png'), fullPage: true })
    const mailed = opts.maildir ? mailTokens(opts.maildir, opts.email).length : 0
    await page.getByRole('button', { name: 'Sign in' }).click()
    if (opts.maildir) await enterCode(page, shots, mailed + 1)
  }
  await page.getByRole('heading', { name: 'Authorize app' }).waitFor()
  const text = await page.textContent('main')
  assert.match(text, /Read and write your posts/)
  if (first) await page.screenshot({ path: join(shots, 'oauth-consent.png'), fullPage: true })
  await page.getByRole('button', { name: 'Authorize' }).click()
}

/** The emailed-code step: a wrong code (refused), then the `n`th mail's. */
async function enterCode(page, shots, n) {
  await page.getByRole('heading', { name: 'Check your email' }).waitFor()
  const [local, domain] = opts.email.split('@')
  assert.match(await page.textContent('main'),
    new RegExp(`Enter the code we emailed to ${local[0]}•••${local.at(-1)}@${domain}`))
  assert.ok(!(await page.textContent('main')).includes(opts.email), 'the address is masked')
  await page.screenshot({ path: join(shots, 'oauth-2fa.png'), fullPage: true })
  await page.setViewportSize({ width: 1100, height: 760 })
  await page.screenshot({ path: join(shots, 'oauth-2fa-wide.png'), fullPage: true })
  await page.setViewportSize({ width: 420, height: 860 })
  await page.getByLabel('Code').fill('AAAAA-AAAAA')
  await page.getByRole('button', { name: 'Sign in' }).click()
  await page.getByRole('alert').filter({ hasText: 'That code is not right' }).waitFor()
  await page.screenshot({ path: join(shots, 'oauth-2fa-wrong.png'), fullPage: true })
  await page.getByLabel('Code').fill(await nthMailToken(opts.maildir, opts.email, n))
  await page.getByRole('button', { name: 'Sign in' }).click()
  found.codeStep = true
}

const found = {}

main(async () => {
  const pds = opts.pds
  const cb = callbackServer()
  const port = await cb.listen()
  const sessions = memoryStore()
  const client = makeClient(pds, port, sessions)
  const { browser, profile } = await launch()
  try {
    const page = await browser.newPage()
    const session = await step('authorize in the browser', async () => {
      const url = await client.authorize(pds, { scope: 'atproto transition:generic' })
      assert.equal(url.origin, new URL(pds).origin)
      const params = cb.next()
      await consent(page, url.href, opts.shots, true)
      return (await client.callback(await params)).session
    })
    const agent = new Agent(session)
    await step('createRecord, getRecord, uploadBlob with the DPoP session', async () => {
      const record = { $type: 'app.bsky.feed.post', text: 'hello via oauth',
        createdAt: new Date().toISOString() }
      const made = await agent.com.atproto.repo.createRecord({
        repo: session.did, collection: 'app.bsky.feed.post', record })
      const rkey = made.data.uri.split('/').pop()
      const got = await agent.com.atproto.repo.getRecord({
        repo: session.did, collection: 'app.bsky.feed.post', rkey })
      assert.equal(got.data.value.text, 'hello via oauth')
      const blob = await agent.com.atproto.repo.uploadBlob(
        new Uint8Array([0x89, 0x50, 0x4e, 0x47, 1, 2, 3]), { encoding: 'image/png' })
      assert.equal(blob.data.blob.size, 7)
      found.did = session.did
      found.uri = made.data.uri
    })
    await step('refresh: the old refresh token is refused', async () => {
      const before = structuredClone(sessions.map.get(session.did))
      await session.getTokenInfo(true)
      const after = sessions.map.get(session.did)
      assert.notEqual(after.tokenSet.refresh_token, before.tokenSet.refresh_token)
      const who = await agent.com.atproto.server.getSession()
      assert.equal(who.data.did, session.did)
      // Put the spent refresh token back: the server refuses it (and, it being a
      // replay, ends the grant).
      sessions.map.set(session.did, before)
      await assert.rejects(session.getTokenInfo(true))
      found.oldRefreshRefused = true
    })
    const second = await step('a remembered browser goes straight to consent', async () => {
      const url = await client.authorize(pds, { scope: 'atproto transition:generic' })
      const params = cb.next()
      await consent(page, url.href, opts.shots, false)
      return (await client.callback(await params)).session
    })
    await step('the account page lists the app', async () => {
      await page.goto(`${pds}/oauth/account`)
      await page.getByRole('heading', { name: 'Your account' }).waitFor()
      await page.screenshot({ path: join(opts.shots, 'oauth-account.png'), fullPage: true })
      found.accountPage = await page.textContent('main')
      assert.match(found.accountPage, /http:\/\/localhost\?redirect_uri/)
    })
    await step('sign out: the tokens are refused', async () => {
      const agent2 = new Agent(second)
      await agent2.com.atproto.server.getSession()
      const token = (await second.getTokenInfo()).sub
      assert.equal(token, second.did)
      await second.signOut()
      await assert.rejects(agent2.com.atproto.server.getSession())
      found.signedOut = true
    })
  } finally {
    await browser.close()
    cb.server.close()
    rmSync(profile, { recursive: true, force: true })
  }
  console.log(JSON.stringify(found))
})
