// Verify hosted repositories with the official @atproto/repo: the full getRepo CAR (commit
// signature against the #atproto key the PLC directory holds, MST structure, every record
// against listRecords), and com.atproto.sync.getRecord inclusion/exclusion proofs.
//
// Usage: node repo_verify.mjs --pds URL --plc URL --did DID[,DID...]
//   (or PDS_URL, PLC_URL, DIDS). The repos must not change while this runs.
// Exits non-zero with a message on the first failed check.

import assert from 'node:assert/strict'

import crypto from '@atproto/crypto'
import identity from '@atproto/identity'
import lexJson from '@atproto/lex-json'
import repoLib from '@atproto/repo'

import { args, main, step, xrpc } from './util.mjs'

const {
  MemoryBlockstore, Repo, cborToLex, cidForRecord, readCar, readCarWithRoot, verifyCommitSig,
  verifyProofs, verifyRecords, verifyRepo, verifyRepoCar,
} = repoLib
const { DidPlcResolver } = identity
const { jsonToLex, lexToJson } = lexJson

const opts = args({ pds: 'PDS_URL', plc: 'PLC_URL', did: 'DIDS' })
assert.ok(opts.pds && opts.plc && opts.did,
  'usage: node repo_verify.mjs --pds URL --plc URL --did DID[,DID...]')
const PDS = opts.pds.replace(/\/$/, '')
const PLC = opts.plc.replace(/\/$/, '')
const DIDS = opts.did.split(',').filter(Boolean)
const CAR = 'application/vnd.ipld.car'

async function getJson(nsid, params) {
  const res = await xrpc(PDS, nsid, { params })
  assert.equal(res.status, 200, `${nsid} ${JSON.stringify(params)}: ${res.status} ` +
    JSON.stringify(res.json))
  return res.json
}

async function getCar(nsid, params) {
  const res = await xrpc(PDS, nsid, { params })
  assert.equal(res.status, 200, `${nsid}: ${res.status} ${JSON.stringify(res.json)}`)
  assert.equal(res.headers.get('content-type'), CAR, `${nsid} content-type`)
  return res.body
}

/** Every record of a repo through listRecords: Map "collection/rkey" -> {cid, value}. */
async function listEverything(did) {
  const desc = await getJson('com.atproto.repo.describeRepo', { repo: did })
  const out = new Map()
  for (const collection of desc.collections) {
    let cursor
    do {
      const page = await getJson('com.atproto.repo.listRecords',
        { repo: did, collection, limit: 100, reverse: true, ...(cursor ? { cursor } : {}) })
      for (const r of page.records) {
        const [, , uriDid, col, rkey] = r.uri.split('/')
        assert.equal(uriDid, did, `listRecords uri ${r.uri}`)
        assert.equal(col, collection, `listRecords uri ${r.uri}`)
        const key = `${col}/${rkey}`
        assert.ok(!out.has(key), `listRecords returned ${key} twice`)
        out.set(key, { cid: r.cid, value: r.value })
      }
      cursor = page.cursor
    } while (cursor)
  }
  return { collections: desc.collections, records: out }
}

async function verifyAccount(did) {
  const key = await step(`${did}: #atproto key from the PLC directory`, async () => {
    const resolver = new DidPlcResolver(PLC, 10_000)
    const data = await resolver.resolveAtprotoData(did)
    assert.equal(data.did, did)
    assert.match(data.signingKey, /^did:key:z/)
    const op = await (await fetch(`${PLC}/${did}/data`)).json()
    assert.equal(op.verificationMethods.atproto, data.signingKey)
    return data.signingKey
  })

  const latest = await getJson('com.atproto.sync.getLatestCommit', { did })
  const listed = await listEverything(did)
  const carBytes = await getCar('com.atproto.sync.getRepo', { did })

  const repo = await step(`${did}: getRepo CAR verifies (verifyRepoCar, signature)`, async () => {
    const { root, blocks } = await readCarWithRoot(carBytes)
    assert.equal(root.toString(), latest.cid, 'CAR root is not the latest commit')
    const { roots } = await readCar(carBytes)
    assert.equal(roots.length, 1, 'a repo CAR has exactly one root')

    const verified = await verifyRepoCar(carBytes, did, key)
    assert.equal(verified.commit.cid.toString(), latest.cid)
    assert.equal(verified.commit.rev, latest.rev)
    const again = await verifyRepo(blocks, root, did, key)
    assert.equal(again.creates.length, verified.creates.length)

    const storage = new MemoryBlockstore(blocks)
    const loaded = await Repo.load(storage, root)
    assert.equal(loaded.did, did)
    const rawCommit = cborToLex(blocks.get(root))
    assert.equal(rawCommit.version, 3, 'commit version')
    assert.equal(rawCommit.did, did)
    assert.equal(rawCommit.rev, latest.rev)
    assert.ok('prev' in rawCommit, 'v3 commits carry prev (null)')
    assert.equal(loaded.commit.rev, latest.rev)
    assert.ok(await verifyCommitSig(loaded.commit, key), 'commit signature does not verify')
    // A signature check with teeth: another key must not verify it.
    const stranger = await crypto.Secp256k1Keypair.create()
    assert.equal(await verifyCommitSig(loaded.commit, stranger.did()), false,
      'commit signature verifies under an unrelated key')
    // The CAR holds exactly the commit, the MST nodes and the records: nothing missing,
    // nothing extra.
    const reachable = await loaded.data.allCids()
    reachable.add(root)
    const inCar = new Set(blocks.cids().map(String))
    const wanted = new Set(reachable.toList().map(String))
    for (const c of wanted) assert.ok(inCar.has(c), `getRepo CAR lacks block ${c}`)
    for (const c of inCar) assert.ok(wanted.has(c), `getRepo CAR has unreachable block ${c}`)
    return { loaded, blocks, verified }
  })

  await step(`${did}: MST walk matches listRecords (keys, CIDs, values)`, async () => {
    const { loaded, blocks, verified } = repo
    const leaves = await loaded.data.leaves()
    const keys = leaves.map((l) => l.key)
    assert.deepEqual(keys, [...keys].sort(), 'MST leaves are not in key order')
    assert.equal(new Set(keys).size, keys.length, 'MST has duplicate keys')
    assert.deepEqual(keys, [...listed.records.keys()].sort(),
      'MST keys and listRecords keys differ')
    const collections = [...new Set(keys.map((k) => k.split('/')[0]))]
    assert.deepEqual(collections, listed.collections, 'describeRepo collections')
    for (const leaf of leaves) {
      const fromList = listed.records.get(leaf.key)
      assert.equal(leaf.value.toString(), fromList.cid, `${leaf.key}: CID differs`)
      const block = blocks.get(leaf.value)
      assert.ok(block, `${leaf.key}: record block missing`)
      const record = await loaded.getRecord(...leaf.key.split('/'))
      assert.deepEqual(lexToJson(record), fromList.value, `${leaf.key}: value differs`)
      // listRecords' JSON is a faithful rendering: encoding it again gives the same CID.
      const cid = await cidForRecord(jsonToLex(fromList.value))
      assert.equal(cid.toString(), fromList.cid, `${leaf.key}: JSON value re-encodes differently`)
    }
    let walked = 0
    for await (const r of loaded.walkRecords()) {
      const fromList = listed.records.get(`${r.collection}/${r.rkey}`)
      assert.ok(fromList, `walkRecords found ${r.collection}/${r.rkey}, listRecords did not`)
      assert.equal(r.cid.toString(), fromList.cid)
      walked++
    }
    assert.equal(walked, listed.records.size)
    const creates = new Map(verified.creates.map((c) => [`${c.collection}/${c.rkey}`, c]))
    assert.equal(creates.size, listed.records.size)
    for (const [k, v] of listed.records) {
      assert.equal(creates.get(k)?.cid.toString(), v.cid, `verifyRepo creates: ${k}`)
    }
    // Node structure: every node's entries are sorted and its layer consistent.
    const nodes = (await loaded.data.allNodes()).filter((n) => n.isTree())
    for (const node of nodes) {
      const entries = await node.getEntries()
      const leafKeys = entries.filter((e) => e.isLeaf()).map((e) => e.key)
      assert.deepEqual(leafKeys, [...leafKeys].sort())
      await node.getLayer()
    }
  })

  await step(`${did}: sync.getRecord proofs (present and absent records)`, async () => {
    const keys = [...listed.records.keys()].sort()
    assert.ok(keys.length >= 3, 'need a few records to prove')
    const present = [...new Set([keys[0], keys[Math.floor(keys.length / 2)], keys.at(-1)])]
    for (const path of present) {
      const [collection, rkey] = path.split('/')
      const want = listed.records.get(path)
      const proof = await getCar('com.atproto.sync.getRecord', { did, collection, rkey })
      const { root } = await readCarWithRoot(proof)
      assert.equal(root.toString(), latest.cid, `${path}: proof is not of the latest commit`)
      const cid = await repo.loaded.data.get(path)
      assert.equal(cid?.toString(), want.cid)
      const good = await verifyProofs(proof, [{ collection, rkey, cid }], did, key)
      assert.equal(good.verified.length, 1, `${path}: inclusion proof does not verify`)
      // The same proof refutes a claim that the record is absent, or has another CID.
      const absent = await verifyProofs(proof, [{ collection, rkey, cid: null }], did, key)
      assert.equal(absent.unverified.length, 1, `${path}: proof also "proves" absence`)
      const otherCid = await repo.loaded.data.get(keys.find((k) => k !== path))
      if (otherCid.toString() !== want.cid) {
        const wrong = await verifyProofs(proof, [{ collection, rkey, cid: otherCid }], did, key)
        assert.equal(wrong.unverified.length, 1, `${path}: proof accepts a wrong CID`)
      }
      const recs = await verifyRecords(proof, did, key)
      const mine = recs.find((r) => r.collection === collection && r.rkey === rkey)
      assert.ok(mine, `${path}: verifyRecords does not find the record in its proof`)
      assert.deepEqual(lexToJson(mine.record), want.value)
      // A proof checked against an unrelated key fails.
      const stranger = await crypto.Secp256k1Keypair.create()
      await assert.rejects(verifyProofs(proof, [{ collection, rkey, cid }], did, stranger.did()),
        /signature/i, `${path}: proof verifies under an unrelated key`)
    }
    // Absent records: between two keys, before the first, after the last, and in a
    // collection that doesn't exist at all.
    const [c0, r0] = keys[0].split('/')
    const mid = keys[Math.floor(keys.length / 2)].split('/')
    const absentClaims = [
      [mid[0], mid[1] + 'zz'],
      [c0, '0000000000000'],
      ['zzz.example.none', 'nothere'],
      ['aaa.example.none', 'nothere'],
      [c0, r0.slice(0, -1) || 'a'],
    ].filter(([c, r]) => !listed.records.has(`${c}/${r}`))
    for (const [collection, rkey] of absentClaims) {
      const proof = await getCar('com.atproto.sync.getRecord', { did, collection, rkey })
      const res = await verifyProofs(proof, [{ collection, rkey, cid: null }], did, key)
      assert.equal(res.verified.length, 1, `${collection}/${rkey}: absence proof does not verify`)
      const recs = await verifyRecords(proof, did, key)
      assert.ok(!recs.some((r) => r.collection === collection && r.rkey === rkey),
        `${collection}/${rkey}: the absence proof holds the record`)
    }
  })
}

main(async () => {
  for (const did of DIDS) await verifyAccount(did)
  process.stdout.write(JSON.stringify({ verified: DIDS }) + '\n')
})
