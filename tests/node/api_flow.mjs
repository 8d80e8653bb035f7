// The official client (@atproto/api AtpAgent) against our PDS: sign-up with a did:plc,
// logins, posting, profile and blobs, pagination, updates and swaps, app passwords,
// session rotation, and refusals (other repos, no auth, bad input).
//
// Usage: node api_flow.mjs --pds URL --plc URL [--public-url URL]
//   (or PDS_URL, PLC_URL, PDS_PUBLIC_URL). --public-url is the #atproto_pds endpoint the
//   server writes in DID documents (default: --pds).
// On success prints one JSON line on stdout: {"accounts": [{did, handle}, ...]}.
// Exits non-zero with a message on the first failed check.

import assert from 'node:assert/strict'

import api from '@atproto/api'
import identity from '@atproto/identity'

import {
  args, assertXrpcErrorBody, expectXrpcError, jwtClaims, main, makePng, rawCid, step, suffix,
  xrpc,
} from './util.mjs'

const { AtpAgent, RichText } = api
const { DidPlcResolver } = identity

const opts = args({ pds: 'PDS_URL', plc: 'PLC_URL', 'public-url': 'PDS_PUBLIC_URL' })
assert.ok(opts.pds && opts.plc, 'usage: node api_flow.mjs --pds URL --plc URL [--public-url URL]')
const PDS = opts.pds.replace(/\/$/, '')
const PLC = opts.plc.replace(/\/$/, '')
const PUBLIC = (opts['public-url'] ?? PDS).replace(/\/$/, '')

const POST = 'app.bsky.feed.post'
const run = suffix()
const utf8 = new TextEncoder()

const now = () => new Date().toISOString()

async function head(did) {
  const res = await xrpc(PDS, 'com.atproto.sync.getLatestCommit', { params: { did } })
  assert.equal(res.status, 200, `getLatestCommit: ${res.status} ${JSON.stringify(res.json)}`)
  return res.json
}

async function listAll(agent, repo, collection, { limit = 100, reverse = false } = {}) {
  const pages = []
  let cursor
  for (let i = 0; i < 1000; i++) {
    const res = await agent.com.atproto.repo.listRecords({ repo, collection, limit, cursor,
      reverse })
    pages.push(res.data.records)
    assert.ok(res.data.records.length <= limit, `listRecords gave more than limit=${limit}`)
    cursor = res.data.cursor
    if (!cursor) break
  }
  return pages
}

function rkeyOf(uri) {
  return uri.split('/').pop()
}

main(async () => {
  const password = `pw-${run}-secret`
  const accounts = {}

  // --- sign-up and identity ---------------------------------------------------------

  const describe = await step('describeServer', async () => {
    const agent = new AtpAgent({ service: PDS })
    const res = await agent.com.atproto.server.describeServer()
    assert.ok(res.data.availableUserDomains.includes('.test'),
      `availableUserDomains: ${JSON.stringify(res.data.availableUserDomains)}`)
    assert.match(res.data.did, /^did:web:/)
    return res.data
  })

  for (const name of ['alice', 'bob']) {
    accounts[name] = await step(`createAccount ${name}`, async () => {
      const handle = `${name}-${run}.test`
      const email = `${name}-${run}@example.com`
      const agent = new AtpAgent({ service: PDS })
      const res = await agent.createAccount({ handle, email, password })
      assert.equal(res.data.handle, handle)
      assert.match(res.data.did, /^did:plc:[a-z2-7]{24}$/, `did: ${res.data.did}`)
      assert.ok(res.data.accessJwt && res.data.refreshJwt)
      assert.equal(agent.session?.did, res.data.did)
      // The SDK moves to the PDS its DID document names.
      assert.equal(agent.pdsUrl?.origin, new URL(PUBLIC).origin, 'agent.pdsUrl from didDoc')
      return { handle, email, did: res.data.did, agent, didDoc: res.data.didDoc }
    })
  }
  const A = accounts.alice
  const B = accounts.bob

  await step('the did:plc is registered on the PLC directory', async () => {
    const resolver = new DidPlcResolver(PLC, 10_000)
    for (const acct of [A, B]) {
      const res = await fetch(`${PLC}/${acct.did}`)
      assert.equal(res.status, 200, `PLC has no document for ${acct.did}`)
      const doc = await res.json()
      assert.equal(doc.id, acct.did)
      assert.deepEqual(doc.alsoKnownAs, [`at://${acct.handle}`])
      const pds = doc.service.find((s) => s.id === '#atproto_pds' || s.id === `${acct.did}#atproto_pds`)
      assert.ok(pds, `no #atproto_pds service in ${JSON.stringify(doc)}`)
      assert.equal(pds.type, 'AtprotoPersonalDataServer')
      assert.equal(pds.serviceEndpoint, PUBLIC)
      // The official resolver reads the same (legacy-form) document.
      const data = await resolver.resolveAtprotoData(acct.did)
      assert.equal(data.pds, PUBLIC)
      assert.equal(data.handle, acct.handle)
      assert.match(data.signingKey, /^did:key:z/)
      // The op log's atproto key and the key in the document our server returns agree.
      const op = await (await fetch(`${PLC}/${acct.did}/data`)).json()
      assert.equal(op.verificationMethods.atproto, data.signingKey)
      assert.deepEqual(op.services.atproto_pds,
        { type: 'AtprotoPersonalDataServer', endpoint: PUBLIC })
      const ours = identity.parseToAtprotoDocument(acct.didDoc)
      assert.equal(ours.did, acct.did)
      assert.equal(ours.signingKey, data.signingKey, 'createAccount didDoc key vs PLC key')
      assert.equal(ours.pds, PUBLIC)
      acct.signingKey = data.signingKey
    }
    // Handles resolve to the new DIDs through the PDS.
    const anon = new AtpAgent({ service: PDS })
    const r = await anon.com.atproto.identity.resolveHandle({ handle: A.handle })
    assert.equal(r.data.did, A.did)
  })

  // --- logins -----------------------------------------------------------------------

  await step('createSession by handle, email and DID; getSession', async () => {
    for (const identifier of [A.handle, A.email, A.did, A.handle.toUpperCase()]) {
      const agent = new AtpAgent({ service: PDS })
      const res = await agent.login({ identifier, password })
      assert.equal(res.data.did, A.did, `login as ${identifier}`)
      assert.equal(res.data.handle, A.handle)
      assert.equal(res.data.email, A.email)
      assert.equal(res.data.active, true)
      assert.equal(jwtClaims(res.data.accessJwt).scope, 'com.atproto.access')
      assert.equal(jwtClaims(res.data.accessJwt).sub, A.did)
      const s = await agent.com.atproto.server.getSession()
      assert.equal(s.data.did, A.did)
      assert.equal(s.data.handle, A.handle)
      assert.equal(s.data.email, A.email)
    }
    const agent = new AtpAgent({ service: PDS })
    await expectXrpcError(agent.login({ identifier: A.handle, password: 'wrong-password' }),
      { status: 401, error: 'AuthenticationRequired' }, 'login with a wrong password')
    await expectXrpcError(agent.login({ identifier: `nobody-${run}.test`, password }),
      { status: 401, error: 'AuthenticationRequired' }, 'login as an unknown handle')
  })

  // Fresh sessions for the rest (the sign-up agents stay logged in too).
  for (const acct of [A, B]) {
    acct.agent = new AtpAgent({ service: PDS })
    await acct.agent.login({ identifier: acct.handle, password })
  }

  // --- posts, facets, replies, likes, reposts, follows, blocks ------------------------

  const post = await step('post with a mention and a link facet (RichText)', async () => {
    const link = 'https://example.com/pâth?q=1'
    const rt = new RichText({ text: `héllo ✨ @${B.handle} read ${link} 🎉 end` })
    await rt.detectFacets(A.agent) // resolves the mention through our resolveHandle
    assert.equal(rt.facets?.length, 2, `facets: ${JSON.stringify(rt.facets)}`)
    const bytes = utf8.encode(rt.text)
    const slice = (f) => new TextDecoder().decode(bytes.slice(f.index.byteStart, f.index.byteEnd))
    const mention = rt.facets.find((f) => f.features[0].$type === 'app.bsky.richtext.facet#mention')
    const linkF = rt.facets.find((f) => f.features[0].$type === 'app.bsky.richtext.facet#link')
    assert.ok(mention && linkF, `facets: ${JSON.stringify(rt.facets)}`)
    assert.equal(mention.features[0].did, B.did)
    assert.equal(slice(mention), `@${B.handle}`)
    assert.equal(linkF.features[0].uri, link)
    assert.equal(slice(linkF), link)
    // Byte offsets, not UTF-16 ones: the text before the mention has multi-byte characters.
    assert.notEqual(mention.index.byteStart, rt.text.indexOf('@'))
    const res = await A.agent.post({ text: rt.text, facets: rt.facets, langs: ['en'] })
    assert.match(res.uri, new RegExp(`^at://${A.did}/${POST}/[a-z2-7]{13}$`))
    const got = await A.agent.com.atproto.repo.getRecord({ repo: A.did, collection: POST,
      rkey: rkeyOf(res.uri) })
    assert.equal(got.data.cid, res.cid)
    assert.equal(got.data.value.text, rt.text)
    assert.deepEqual(got.data.value.facets, JSON.parse(JSON.stringify(rt.facets)))
    // Reading by handle works as well as by DID.
    const byHandle = await A.agent.com.atproto.repo.getRecord({ repo: A.handle, collection: POST,
      rkey: rkeyOf(res.uri) })
    assert.equal(byHandle.data.cid, res.cid)
    return res
  })

  await step('replies carry root/parent strong refs', async () => {
    const r1 = await B.agent.post({ text: 'first reply',
      reply: { root: { uri: post.uri, cid: post.cid }, parent: { uri: post.uri, cid: post.cid } } })
    const r2 = await A.agent.post({ text: 'reply to the reply',
      reply: { root: { uri: post.uri, cid: post.cid }, parent: { uri: r1.uri, cid: r1.cid } } })
    const got = await A.agent.com.atproto.repo.getRecord({ repo: A.did, collection: POST,
      rkey: rkeyOf(r2.uri) })
    assert.deepEqual(got.data.value.reply, {
      root: { uri: post.uri, cid: post.cid }, parent: { uri: r1.uri, cid: r1.cid } })
    const got1 = await A.agent.com.atproto.repo.getRecord({ repo: B.did, collection: POST,
      rkey: rkeyOf(r1.uri) })
    assert.equal(got1.data.cid, r1.cid)
    assert.deepEqual(got1.data.value.reply.parent, { uri: post.uri, cid: post.cid })
  })

  await step('likes, reposts, follows and blocks', async () => {
    const like = await B.agent.like(post.uri, post.cid)
    const repost = await B.agent.repost(post.uri, post.cid)
    const followAB = await A.agent.follow(B.did)
    const followBA = await B.agent.follow(A.did)
    const blocked = 'did:plc:ewvi7nxzyoun6zhxrhs64oiz'
    const block = await A.agent.app.bsky.graph.block.create({ repo: A.did },
      { subject: blocked, createdAt: now() })
    const check = async (acct, collection, ref, subject) => {
      const got = await acct.agent.com.atproto.repo.getRecord({ repo: acct.did, collection,
        rkey: rkeyOf(ref.uri) })
      assert.equal(got.data.uri, ref.uri)
      assert.equal(got.data.cid, ref.cid)
      assert.equal(got.data.value.$type, collection)
      assert.deepEqual(got.data.value.subject, subject)
      const all = (await listAll(acct.agent, acct.did, collection)).flat()
      assert.ok(all.some((r) => r.uri === ref.uri && r.cid === ref.cid),
        `${ref.uri} missing from listRecords`)
    }
    await check(B, 'app.bsky.feed.like', like, { uri: post.uri, cid: post.cid })
    await check(B, 'app.bsky.feed.repost', repost, { uri: post.uri, cid: post.cid })
    await check(A, 'app.bsky.graph.follow', followAB, B.did)
    await check(B, 'app.bsky.graph.follow', followBA, A.did)
    await check(A, 'app.bsky.graph.block', block, blocked)
    // Deleting through the helpers works too.
    await B.agent.deleteRepost(repost.uri)
    await expectXrpcError(B.agent.com.atproto.repo.getRecord({ repo: B.did,
      collection: 'app.bsky.feed.repost', rkey: rkeyOf(repost.uri) }),
    { status: 400, error: 'RecordNotFound' }, 'getRecord of a deleted repost')
    const desc = await A.agent.com.atproto.repo.describeRepo({ repo: A.did })
    assert.equal(desc.data.handle, A.handle)
    assert.equal(desc.data.did, A.did)
    for (const c of [POST, 'app.bsky.graph.block', 'app.bsky.graph.follow']) {
      assert.ok(desc.data.collections.includes(c), `describeRepo lacks ${c}`)
    }
  })

  // --- profile with an avatar blob ----------------------------------------------------

  await step('profile with an avatar: uploadBlob, putRecord, getBlob, listBlobs', async () => {
    const png = makePng(8, 8, 42)
    const up = await A.agent.uploadBlob(png, { encoding: 'image/png' })
    const blob = up.data.blob
    assert.equal(blob.mimeType, 'image/png')
    assert.equal(blob.size, png.length)
    assert.equal(blob.ref.toString(), rawCid(png), 'blob CID is the raw sha-256 CID of its bytes')
    // Not referenced yet: a temporary upload is not part of the repo.
    const before = await A.agent.com.atproto.sync.listBlobs({ did: A.did })
    assert.ok(!before.data.cids.includes(blob.ref.toString()), 'unreferenced blob listed')

    const headBefore = await head(A.did)
    const put = await A.agent.com.atproto.repo.putRecord({
      repo: A.did, collection: 'app.bsky.actor.profile', rkey: 'self',
      record: { $type: 'app.bsky.actor.profile', displayName: 'Alice ✨',
        description: 'testing', avatar: blob },
    })
    assert.equal(put.data.uri, `at://${A.did}/app.bsky.actor.profile/self`)
    assert.notEqual(put.data.commit.cid, headBefore.cid)
    const got = await A.agent.com.atproto.repo.getRecord({ repo: A.did,
      collection: 'app.bsky.actor.profile', rkey: 'self' })
    assert.equal(got.data.cid, put.data.cid)
    assert.equal(got.data.value.avatar.ref.toString(), rawCid(png))
    assert.equal(got.data.value.avatar.mimeType, 'image/png')
    assert.equal(got.data.value.avatar.size, png.length)

    const res = await fetch(`${PDS}/xrpc/com.atproto.sync.getBlob?did=${A.did}&cid=${rawCid(png)}`)
    assert.equal(res.status, 200)
    const bytes = new Uint8Array(await res.arrayBuffer())
    assert.deepEqual(bytes, png, 'getBlob returns the uploaded bytes')
    assert.equal(res.headers.get('content-type'), 'image/png')
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff')
    assert.match(res.headers.get('content-security-policy') ?? '', /default-src 'none'/)
    assert.match(res.headers.get('content-disposition') ?? '', /^attachment/)
    // The SDK's own getBlob reads the same.
    const viaSdk = await A.agent.com.atproto.sync.getBlob({ did: A.did, cid: rawCid(png) })
    assert.deepEqual(new Uint8Array(viaSdk.data), png)

    const missing = await A.agent.com.atproto.repo.listMissingBlobs()
    assert.deepEqual(missing.data.blobs, [])
    const listed = await A.agent.com.atproto.sync.listBlobs({ did: A.did })
    assert.ok(listed.data.cids.includes(rawCid(png)), `listBlobs: ${listed.data.cids}`)

    // upsertProfile (getRecord + putRecord with swapRecord) keeps the avatar.
    await A.agent.upsertProfile((existing) => ({ ...existing, description: 'updated' }))
    const after = await A.agent.com.atproto.repo.getRecord({ repo: A.did,
      collection: 'app.bsky.actor.profile', rkey: 'self' })
    assert.equal(after.data.value.description, 'updated')
    assert.equal(after.data.value.avatar.ref.toString(), rawCid(png))

    // A record naming a blob that was never uploaded is refused, and nothing changes.
    const ghost = makePng(3, 3, 7)
    const h0 = await head(A.did)
    await expectXrpcError(A.agent.com.atproto.repo.createRecord({
      repo: A.did, collection: POST,
      record: { $type: POST, text: 'ghost', createdAt: now(),
        embed: { $type: 'app.bsky.embed.images', images: [{ alt: '', image: {
          $type: 'blob', ref: { $link: rawCid(ghost) }, mimeType: 'image/png',
          size: ghost.length } }] } },
    }), { status: 400 }, 'record with a blob never uploaded')
    assert.deepEqual(await head(A.did), h0, 'head moved after a refused write')
  })

  // --- validate: true: every record checked against the official lexicons -------------

  await step('validate: true on posts, replies, likes, follows, an image post, a profile', async () => {
    const create = async (acct, collection, record, extra = {}) => {
      const res = await acct.agent.com.atproto.repo.createRecord({ repo: acct.did, collection,
        record: { $type: collection, ...record }, validate: true, ...extra })
      assert.equal(res.data.validationStatus, 'valid', `${collection}: ${JSON.stringify(res.data)}`)
      return { uri: res.data.uri, cid: res.data.cid }
    }
    const rt = new RichText({ text: `validated, @${B.handle} https://example.com #lexicon` })
    await rt.detectFacets(A.agent)
    const png = makePng(4, 3, 9)
    const image = (await A.agent.uploadBlob(png, { encoding: 'image/png' })).data.blob
    const root = await create(A, POST, { text: rt.text, facets: rt.facets, langs: ['en'],
      createdAt: now(), embed: { $type: 'app.bsky.embed.images', images: [
        { alt: 'tiny', image, aspectRatio: { width: 4, height: 3 } }] } })
    await create(B, POST, { text: 'validated reply', createdAt: now(),
      reply: { root, parent: root } })
    await create(B, 'app.bsky.feed.like', { subject: root, createdAt: now() })
    await create(B, 'app.bsky.graph.follow', { subject: A.did, createdAt: now() })
    const profile = await B.agent.com.atproto.repo.putRecord({ repo: B.did,
      collection: 'app.bsky.actor.profile', rkey: 'self', validate: true,
      record: { $type: 'app.bsky.actor.profile', displayName: 'Bob' } })
    assert.equal(profile.data.validationStatus, 'valid')
    const batch = await A.agent.com.atproto.repo.applyWrites({ repo: A.did, validate: true,
      writes: [{ $type: 'com.atproto.repo.applyWrites#create', collection: POST,
        value: { $type: POST, text: 'in a batch', createdAt: now() } }] })
    assert.equal(batch.data.results[0].validationStatus, 'valid')

    // Refusals: an invalid record, an unknown lexicon, a key of the wrong type.
    const h0 = await head(A.did)
    const refused = async (params, message, label) => {
      try {
        await A.agent.com.atproto.repo.createRecord({ repo: A.did, validate: true, ...params })
      } catch (e) {
        assert.equal(e.status, 400, label)
        assert.equal(e.error, 'InvalidRequest', label)
        assert.ok(e.message.includes(message), `${label}: ${e.message}`)
        return
      }
      assert.fail(`${label}: accepted`)
    }
    await refused({ collection: POST, record: { $type: POST, text: 'x'.repeat(301),
      createdAt: now() } }, 'Record/text must not be longer than 300 graphemes', 'long post')
    await refused({ collection: POST, record: { $type: POST, text: 'no date' } },
      'Record must have the property "createdAt"', 'post without createdAt')
    await refused({ collection: 'com.example.unknown', record: { $type: 'com.example.unknown' } },
      'Unknown lexicon type: com.example.unknown', 'unknown lexicon')
    await refused({ collection: 'app.bsky.actor.profile', rkey: 'other',
      record: { $type: 'app.bsky.actor.profile' } }, 'must be "self"', 'profile key')
    assert.deepEqual(await head(A.did), h0, 'head moved after a refused write')
  })

  // --- pagination -------------------------------------------------------------------

  await step('listRecords pagination, both directions', async () => {
    const collection = 'app.bsky.feed.post'
    const created = []
    for (let i = 0; i < 25; i++) {
      const res = await A.agent.post({ text: `post number ${i}` })
      created.push(res.uri)
    }
    const all = (await listAll(A.agent, A.did, collection)).flat()
    for (const uri of created) assert.ok(all.some((r) => r.uri === uri), `${uri} not listed`)

    const fwdPages = await listAll(A.agent, A.did, collection, { limit: 10 })
    const revPages = await listAll(A.agent, A.did, collection, { limit: 10, reverse: true })
    for (const [label, pages] of [['forward', fwdPages], ['reverse', revPages]]) {
      const flat = pages.flat()
      assert.ok(pages.length >= 3, `${label}: ${pages.length} pages for ${flat.length} records`)
      for (const p of pages.slice(0, -1)) assert.equal(p.length, 10, `${label}: short page`)
      const keys = flat.map((r) => rkeyOf(r.uri))
      assert.equal(new Set(keys).size, keys.length, `${label}: pages overlap`)
      assert.deepEqual(new Set(keys), new Set(all.map((r) => rkeyOf(r.uri))),
        `${label}: pages are not the whole collection`)
      const sorted = [...keys].sort()
      assert.deepEqual(keys, label === 'forward' ? sorted.reverse() : sorted,
        `${label}: not in ${label === 'forward' ? 'descending' : 'ascending'} rkey order`)
    }
    // Newest first by default, so the newest post heads the first forward page.
    assert.equal(fwdPages[0][0].uri, created[created.length - 1])
    assert.equal(revPages.flat().at(-1).uri, created[created.length - 1])
    assert.deepEqual(fwdPages.flat().map((r) => r.uri),
      revPages.flat().map((r) => r.uri).reverse())
  })

  // --- updates, deletes, applyWrites, swaps -------------------------------------------

  await step('putRecord update and deleteRecord', async () => {
    const rkey = '3jzfcijpj2z2a' // a post's key is a TID (its lexicon's key type)
    const c1 = await A.agent.com.atproto.repo.putRecord({ repo: A.did, collection: POST, rkey,
      record: { $type: POST, text: 'v1', createdAt: now() } })
    const c2 = await A.agent.com.atproto.repo.putRecord({ repo: A.did, collection: POST, rkey,
      record: { $type: POST, text: 'v2', createdAt: now() } })
    assert.notEqual(c1.data.cid, c2.data.cid)
    const got = await A.agent.com.atproto.repo.getRecord({ repo: A.did, collection: POST, rkey })
    assert.equal(got.data.value.text, 'v2')
    assert.equal(got.data.cid, c2.data.cid)
    const del = await A.agent.com.atproto.repo.deleteRecord({ repo: A.did, collection: POST, rkey })
    assert.equal(del.data.commit?.cid, (await head(A.did)).cid)
    await expectXrpcError(A.agent.com.atproto.repo.getRecord({ repo: A.did, collection: POST,
      rkey }), { status: 400, error: 'RecordNotFound' }, 'getRecord after delete')
  })

  await step('applyWrites: creates, updates and deletes in one commit', async () => {
    const col = 'com.example.interop.thing'
    const seed = await A.agent.com.atproto.repo.applyWrites({ repo: A.did, writes: [
      { $type: 'com.atproto.repo.applyWrites#create', collection: col, rkey: 'upd',
        value: { $type: col, n: 1 } },
      { $type: 'com.atproto.repo.applyWrites#create', collection: col, rkey: 'del',
        value: { $type: col, n: 2 } },
    ] })
    assert.equal(seed.data.results.length, 2)
    const h0 = await head(A.did)
    assert.equal(seed.data.commit.cid, h0.cid)
    const res = await A.agent.com.atproto.repo.applyWrites({ repo: A.did, writes: [
      { $type: 'com.atproto.repo.applyWrites#create', collection: col, rkey: 'new1',
        value: { $type: col, n: 3, nested: { list: [1, 'two', null, true] } } },
      { $type: 'com.atproto.repo.applyWrites#create', collection: col,
        value: { $type: col, n: 4 } },
      { $type: 'com.atproto.repo.applyWrites#update', collection: col, rkey: 'upd',
        value: { $type: col, n: 10 } },
      { $type: 'com.atproto.repo.applyWrites#delete', collection: col, rkey: 'del' },
    ] })
    assert.deepEqual(res.data.results.map((r) => r.$type), [
      'com.atproto.repo.applyWrites#createResult', 'com.atproto.repo.applyWrites#createResult',
      'com.atproto.repo.applyWrites#updateResult', 'com.atproto.repo.applyWrites#deleteResult'])
    const h1 = await head(A.did)
    assert.equal(res.data.commit.cid, h1.cid)
    assert.ok(h1.rev > h0.rev, 'rev did not advance')
    const records = (await listAll(A.agent, A.did, col)).flat()
    const byKey = Object.fromEntries(records.map((r) => [rkeyOf(r.uri), r]))
    const generated = rkeyOf(res.data.results[1].uri)
    assert.match(generated, /^[a-z2-7]{13}$/)
    assert.deepEqual(Object.keys(byKey).sort(), [generated, 'new1', 'upd'].sort())
    assert.equal(byKey.upd.value.n, 10)
    assert.equal(byKey.upd.cid, res.data.results[2].cid)
    assert.deepEqual(byKey.new1.value.nested, { list: [1, 'two', null, true] })
    assert.equal(byKey.new1.cid, res.data.results[0].cid)
  })

  await step('swaps: a stale swapCommit and a wrong swapRecord fail with InvalidSwap', async () => {
    const stale = await head(A.did)
    const target = await A.agent.post({ text: 'swap target' })
    const current = await head(A.did)
    assert.notEqual(current.cid, stale.cid)
    const rkey = '3jzfcijpj2z2b' // a TID: the key type of a post
    const err = await expectXrpcError(A.agent.com.atproto.repo.createRecord({
      repo: A.did, collection: POST, rkey, swapCommit: stale.cid,
      record: { $type: POST, text: 'must not land', createdAt: now() } }),
    { status: 400, error: 'InvalidSwap' }, 'createRecord with a stale swapCommit')
    assert.equal(err.error, 'InvalidSwap')
    assert.deepEqual(await head(A.did), current, 'head moved after a refused swapCommit')
    await expectXrpcError(A.agent.com.atproto.repo.getRecord({ repo: A.did, collection: POST,
      rkey }), { status: 400, error: 'RecordNotFound' }, 'record of a refused swapCommit')

    // putRecord with a swapRecord naming some other record's CID.
    const tr = rkeyOf(target.uri)
    await expectXrpcError(A.agent.com.atproto.repo.putRecord({
      repo: A.did, collection: POST, rkey: tr, swapRecord: post.cid,
      record: { $type: POST, text: 'must not land either', createdAt: now() } }),
    { status: 400, error: 'InvalidSwap' }, 'putRecord with a wrong swapRecord')
    // swapRecord null means "must not exist", and it does.
    await expectXrpcError(A.agent.com.atproto.repo.putRecord({
      repo: A.did, collection: POST, rkey: tr, swapRecord: null,
      record: { $type: POST, text: 'nor this', createdAt: now() } }),
    { status: 400, error: 'InvalidSwap' }, 'putRecord with swapRecord null over a record')
    await expectXrpcError(A.agent.com.atproto.repo.deleteRecord({
      repo: A.did, collection: POST, rkey: tr, swapRecord: post.cid }),
    { status: 400, error: 'InvalidSwap' }, 'deleteRecord with a wrong swapRecord')
    await expectXrpcError(A.agent.com.atproto.repo.applyWrites({
      repo: A.did, swapCommit: stale.cid, writes: [{ $type: 'com.atproto.repo.applyWrites#delete',
        collection: POST, rkey: tr }] }),
    { status: 400, error: 'InvalidSwap' }, 'applyWrites with a stale swapCommit')
    assert.deepEqual(await head(A.did), current, 'head moved after refused swaps')
    const still = await A.agent.com.atproto.repo.getRecord({ repo: A.did, collection: POST, rkey: tr })
    assert.equal(still.data.cid, target.cid)

    // The right swaps go through.
    const ok = await A.agent.com.atproto.repo.putRecord({
      repo: A.did, collection: POST, rkey: tr, swapRecord: target.cid, swapCommit: current.cid,
      record: { $type: POST, text: 'swapped', createdAt: now() } })
    const created = await A.agent.com.atproto.repo.createRecord({
      repo: A.did, collection: POST, rkey, swapCommit: ok.data.commit.cid,
      record: { $type: POST, text: 'now it lands', createdAt: now() } })
    assert.equal(created.data.uri, `at://${A.did}/${POST}/${rkey}`)
  })

  // --- app passwords ----------------------------------------------------------------

  await step('app passwords: create, log in, write, limits, revoke', async () => {
    const name = `interop ${run}`
    const created = await A.agent.com.atproto.server.createAppPassword({ name })
    assert.equal(created.data.name, name)
    assert.match(created.data.password, /^[a-z2-7]{4}(-[a-z2-7]{4}){3}$/)
    const list = await A.agent.com.atproto.server.listAppPasswords()
    assert.ok(list.data.passwords.some((p) => p.name === name))
    assert.ok(list.data.passwords.every((p) => !('password' in p)), 'listAppPasswords leaks secrets')

    const app = new AtpAgent({ service: PDS })
    const login = await app.login({ identifier: A.handle, password: created.data.password })
    assert.equal(login.data.did, A.did)
    assert.equal(jwtClaims(login.data.accessJwt).scope, 'com.atproto.appPass')
    const s = await app.com.atproto.server.getSession()
    assert.equal(s.data.did, A.did)
    const written = await app.post({ text: 'posted with an app password' })
    const got = await A.agent.com.atproto.repo.getRecord({ repo: A.did, collection: POST,
      rkey: rkeyOf(written.uri) })
    assert.equal(got.data.cid, written.cid)

    // An app-password session cannot mint more app passwords (or list them).
    await expectXrpcError(app.com.atproto.server.createAppPassword({ name: `nested ${run}` }),
      { status: [400, 401, 403], error: ['InvalidToken', 'AuthenticationRequired', 'Forbidden'] },
      'createAppPassword with an app-password session')
    const list2 = await A.agent.com.atproto.server.listAppPasswords()
    assert.ok(!list2.data.passwords.some((p) => p.name === `nested ${run}`))

    const refreshJwt = app.session.refreshJwt
    await A.agent.com.atproto.server.revokeAppPassword({ name })
    const list3 = await A.agent.com.atproto.server.listAppPasswords()
    assert.ok(!list3.data.passwords.some((p) => p.name === name))
    await expectXrpcError(app.com.atproto.server.refreshSession(undefined,
      { headers: { authorization: `Bearer ${refreshJwt}` } }),
    { status: [400, 401], error: ['ExpiredToken', 'InvalidToken'] },
    'refreshSession of a revoked app password')
    await expectXrpcError(new AtpAgent({ service: PDS }).login({ identifier: A.handle,
      password: created.data.password }), { status: 401, error: 'AuthenticationRequired' },
    'login with a revoked app password')
  })

  // --- refresh rotation and logout ----------------------------------------------------

  await step('refresh rotation and logout', async () => {
    const agent = new AtpAgent({ service: PDS })
    await agent.login({ identifier: A.email, password })
    const r1 = agent.session.refreshJwt
    const raw = (token) => agent.com.atproto.server.refreshSession(undefined,
      { headers: { authorization: `Bearer ${token}` } })

    await agent.sessionManager.refreshSession()
    const r2 = agent.session.refreshJwt
    assert.notEqual(r2, r1, 'refreshSession returned the same refresh token')
    assert.equal(jwtClaims(r2).scope, 'com.atproto.refresh')
    assert.equal(agent.session.did, A.did)
    const s = await agent.com.atproto.server.getSession()
    assert.equal(s.data.did, A.did)

    // The successor is used; the first token is now refused.
    const third = await raw(r2)
    const r3 = third.data.refreshJwt
    assert.notEqual(r3, r2)
    await expectXrpcError(raw(r1), { status: [400, 401], error: ['ExpiredToken', 'InvalidToken'] },
      'reusing a rotated refresh token after its successor was used')
    // An access token is not a refresh token, nor the other way round.
    await expectXrpcError(raw(third.data.accessJwt), { status: [400, 401] },
      'refreshSession with an access token')
    await expectXrpcError(agent.com.atproto.server.getSession(undefined,
      { headers: { authorization: `Bearer ${r3}` } }), { status: [400, 401] },
    'getSession with a refresh token')

    // Logout: the refresh token is dead afterwards.
    await agent.com.atproto.server.deleteSession(undefined,
      { headers: { authorization: `Bearer ${r3}` } })
    await expectXrpcError(raw(r3), { status: [400, 401], error: ['ExpiredToken', 'InvalidToken'] },
      'refreshSession after deleteSession')
    // The SDK's logout works against us as well.
    const other = new AtpAgent({ service: PDS })
    await other.login({ identifier: A.handle, password })
    const rOther = other.session.refreshJwt
    await other.logout()
    assert.equal(other.session, undefined)
    await expectXrpcError(raw(rOther), { status: [400, 401] }, 'refresh after agent.logout()')
  })

  // --- refusals ---------------------------------------------------------------------

  await step("another account's repo is refused", async () => {
    const h0 = await head(A.did)
    const target = (await listAll(A.agent, A.did, POST)).flat()[0]
    const tries = [
      ['createRecord', () => B.agent.com.atproto.repo.createRecord({ repo: A.did, collection: POST,
        record: { $type: POST, text: 'intruder', createdAt: now() } })],
      ['createRecord by handle', () => B.agent.com.atproto.repo.createRecord({ repo: A.handle,
        collection: POST, record: { $type: POST, text: 'intruder', createdAt: now() } })],
      ['putRecord', () => B.agent.com.atproto.repo.putRecord({ repo: A.did, collection: POST,
        rkey: rkeyOf(target.uri), record: { $type: POST, text: 'defaced', createdAt: now() } })],
      ['deleteRecord', () => B.agent.com.atproto.repo.deleteRecord({ repo: A.did, collection: POST,
        rkey: rkeyOf(target.uri) })],
      ['applyWrites', () => B.agent.com.atproto.repo.applyWrites({ repo: A.did, writes: [
        { $type: 'com.atproto.repo.applyWrites#delete', collection: POST,
          rkey: rkeyOf(target.uri) }] })],
    ]
    for (const [label, call] of tries) {
      const err = await expectXrpcError(call(), { status: [401] }, `B's ${label} on A's repo`)
      assert.ok(typeof err.error === 'string' && err.error.length > 0, `${label}: no error name`)
    }
    // The raw answer is an XRPC error body.
    const res = await xrpc(PDS, 'com.atproto.repo.createRecord', { token: B.agent.session.accessJwt,
      json: { repo: A.did, collection: POST, record: { $type: POST, text: 'x', createdAt: now() } } })
    // As the reference PDS answers: 401, the credentials don't cover A's repo.
    assertXrpcErrorBody(res, { status: [401], error: ['AuthenticationRequired'] },
      'raw cross-repo createRecord')
    assert.deepEqual(await head(A.did), h0, "A's head moved after B's writes")
    const still = await A.agent.com.atproto.repo.getRecord({ repo: A.did, collection: POST,
      rkey: rkeyOf(target.uri) })
    assert.equal(still.data.cid, target.cid)
  })

  await step('no auth is refused with 401 AuthenticationRequired', async () => {
    const h0 = await head(A.did)
    const anon = new AtpAgent({ service: PDS })
    const err = await expectXrpcError(anon.com.atproto.repo.createRecord({ repo: A.did,
      collection: POST, record: { $type: POST, text: 'anonymous', createdAt: now() } }),
    { status: 401, error: 'AuthenticationRequired' }, 'createRecord without a session')
    assert.ok(err.headers?.['www-authenticate'], 'no WWW-Authenticate header on a 401')
    const res = await xrpc(PDS, 'com.atproto.repo.createRecord', { json: { repo: A.did,
      collection: POST, record: { $type: POST, text: 'anonymous', createdAt: now() } } })
    assertXrpcErrorBody(res, { status: 401, error: 'AuthenticationRequired' }, 'raw, no auth')
    const bad = await xrpc(PDS, 'com.atproto.repo.createRecord', { token: 'not-a-jwt', json: {
      repo: A.did, collection: POST, record: { $type: POST, text: 'x', createdAt: now() } } })
    assertXrpcErrorBody(bad, { status: [400, 401], error: ['InvalidToken', 'AuthenticationRequired'] },
      'raw, garbage token')
    assert.deepEqual(await head(A.did), h0)
  })

  await step('bad input gets the right XRPC error and writes nothing', async () => {
    const token = A.agent.session.accessJwt
    const rec = (extra = {}) => ({ $type: POST, text: 'bad input', createdAt: now(), ...extra })
    const cases = [
      ['wrong $type', { json: { repo: A.did, collection: POST,
        record: { ...rec(), $type: 'app.bsky.feed.like' } } }, 400, ['InvalidRecord', 'InvalidRequest']],
      // A missing $type is filled in from the collection (as the reference does); null is not.
      ['null $type', { json: { repo: A.did, collection: POST,
        record: { text: 'x', createdAt: now(), $type: null } } }, 400, ['InvalidRecord', 'InvalidRequest']],
      ['invalid rkey', { json: { repo: A.did, collection: POST, rkey: 'bad rkey!',
        record: rec() } }, 400, ['InvalidRequest']],
      ['rkey "."', { json: { repo: A.did, collection: POST, rkey: '.', record: rec() } },
        400, ['InvalidRequest']],
      ['invalid collection', { json: { repo: A.did, collection: 'not an nsid',
        record: { ...rec(), $type: 'not an nsid' } } }, 400, ['InvalidRequest']],
      ['float in a record', { json: { repo: A.did, collection: POST,
        record: rec({ score: 1.5 }) } }, 400, ['InvalidRecord', 'InvalidRequest']],
      ['record not an object', { json: { repo: A.did, collection: POST, record: [1, 2] } },
        400, ['InvalidRecord', 'InvalidRequest']],
      ['non-JSON body', { body: '{"repo": "' + A.did + '", not json', contentType:
        'application/json' }, 400, ['InvalidRequest']],
      ['oversized record (>1MB)', { json: { repo: A.did, collection: POST,
        record: rec({ blob: 'x'.repeat(1_100_000) }) } },
      [400, 413], ['RecordTooBig', 'InvalidRecord', 'InvalidRequest', 'PayloadTooLarge']],
      ['missing record', { json: { repo: A.did, collection: POST } }, 400, ['InvalidRequest']],
    ]
    for (const [label, req, status, names] of cases) {
      const before = await head(A.did)
      const res = await xrpc(PDS, 'com.atproto.repo.createRecord', { token, ...req })
      assertXrpcErrorBody(res, { status, error: names }, label)
      assert.deepEqual(await head(A.did), before, `${label}: head moved`)
    }
    // putRecord and applyWrites check their input the same way.
    const before = await head(A.did)
    assertXrpcErrorBody(await xrpc(PDS, 'com.atproto.repo.putRecord', { token, json: {
      repo: A.did, collection: POST, rkey: 'self', record: rec({ score: 0.25 }) } }),
    { status: 400, error: ['InvalidRecord', 'InvalidRequest'] }, 'putRecord with a float')
    assertXrpcErrorBody(await xrpc(PDS, 'com.atproto.repo.applyWrites', { token, json: {
      repo: A.did, writes: [
        { $type: 'com.atproto.repo.applyWrites#create', collection: POST, value: rec() },
        { $type: 'com.atproto.repo.applyWrites#create', collection: POST, rkey: 'a/b',
          value: rec() }] } }),
    { status: 400, error: 'InvalidRequest' }, 'applyWrites with one bad rkey')
    assert.deepEqual(await head(A.did), before, 'head moved after refused putRecord/applyWrites')
  })

  process.stdout.write(JSON.stringify({
    accounts: [A, B].map((a) => ({ did: a.did, handle: a.handle })),
    serviceDid: describe.did,
  }) + '\n')
})
