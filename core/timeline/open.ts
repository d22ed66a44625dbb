import { Effect } from "effect"
import { makeAcceptor } from "../acceptor/acceptor.js"
import type { NodeId, PersistedState } from "../acceptor/state.js"
import type { WalStorage } from "../acceptor/wal-storage.js"
import { openSegmentStore } from "../wal/segment-store.js"
import { OffloadedWal } from "./offloaded-wal.js"

/**
 * A timeline's acceptor over its WAL storage, as the control file says it is: WAL on local
 * disk (Present), or evicted to object storage (Offloaded: no local WAL at all). Used at load
 * and when an evicted timeline comes back.
 */
export interface TimelineStorageOptions {
  readonly directory: string
  readonly state: PersistedState
  readonly nodeId: NodeId
  readonly noSync: boolean
}

export const openTimelineStorage = (options: TimelineStorageOptions) =>
  Effect.gen(function* () {
    const { directory, state, noSync } = options
    const wal: WalStorage = state.evictionState._tag === "Offloaded"
      ? new OffloadedWal(state.evictionState.flushLsn)
      : yield* openSegmentStore({
        directory,
        segmentSizeBytes: state.server.walSegSizeBytes,
        commitLsn: state.commitLsn,
        timelineStartLsn: state.timelineStartLsn,
        pgVersion: state.server.pgVersion,
        systemId: state.server.systemId,
        noSync
      })
    const acceptor = yield* makeAcceptor({ nodeId: options.nodeId, state, walStorage: wal, directory, noSync })
    return { wal, acceptor }
  })
