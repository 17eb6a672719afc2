/**
 * Where assets live. Asset ids are `<gateway name>.arm-<i>` and cells are
 * `<gateway name>.cell`, so the owner of an asset is the gateway whose name
 * prefixes it; names are unique in the mesh. Peers are resolved through the
 * membership service (names announced in identify).
 */
import type { EstopTarget } from "../protocols/estop_codec.ts";
import type { GatewayIdentity } from "./mesh.ts";

/** The mesh's membership as the directory reads it (the Mesh, or its mirror on the e-stop thread). */
export interface GatewayRoster {
  /** Every gateway ever identified, by peer ID. */
  knownGateways(): ReadonlyMap<string, GatewayIdentity>;
}

/** What the directory needs of a local asset. */
export interface LocatedAsset {
  readonly id: string;
  readonly cell: string;
}

/** The gateway name an asset or cell id belongs to. */
export function ownerNameOf(id: string): string {
  const dot = id.indexOf(".");
  return dot > 0 ? id.slice(0, dot) : id;
}

export class AssetDirectory {
  constructor(
    private readonly self: { peerId: string; name: string; factory: string },
    private readonly assets: ReadonlyMap<string, LocatedAsset>,
    private readonly mesh: GatewayRoster,
  ) {}

  /**
   * Peer IDs of the gateway that drives an asset or cell: one, or none while
   * unknown. Two only where two gateways claim one name (a misconfiguration
   * the mesh logs): a stop then goes to both rather than to a guess.
   */
  ownersOf(assetId: string): string[] {
    const name = ownerNameOf(assetId);
    const out = name === this.self.name ? [this.self.peerId] : [];
    for (const [peerId, identity] of this.mesh.knownGateways()) {
      if (identity.name === name) out.push(peerId);
    }
    return out;
  }

  gatewaysIn(target: EstopTarget): string[] {
    if (target.kind === "asset" || target.kind === "cell") return this.ownersOf(target.id);
    const out = [this.self.peerId];
    for (const [peerId, identity] of this.mesh.knownGateways()) {
      if (target.kind === "all" || identity.factory === (target.id ?? this.self.factory)) {
        out.push(peerId);
      }
    }
    return out;
  }

  localAssets(target: EstopTarget): string[] {
    const all = [...this.assets.values()];
    switch (target.kind) {
      case "asset":
        return this.assets.has(target.id) ? [target.id] : [];
      case "cell":
        return all.filter((a) => a.cell === target.id).map((a) => a.id);
      case "factory":
        return (target.id ?? this.self.factory) === this.self.factory ? all.map((a) => a.id) : [];
      case "all":
        return all.map((a) => a.id);
    }
  }
}
