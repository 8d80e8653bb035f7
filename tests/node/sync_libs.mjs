// The libraries as @atproto/sync itself resolves them, for the firehose consumers
// (firehose_verify.mjs, firehose_follow.mjs): the @atproto/repo, CBOR decoder and CID
// class whose objects its events carry.

import { createRequire } from 'node:module'

import sync from '@atproto/sync'

export const { Firehose } = sync

const require = createRequire(import.meta.url)
const fromSync = createRequire(require.resolve('@atproto/sync'))
export const repoLib = fromSync('@atproto/repo')
const fromRepo = createRequire(fromSync.resolve('@atproto/repo'))
export const { cborDecode } = fromRepo('@atproto/common')
export const { CID } = fromRepo('multiformats/cid')
