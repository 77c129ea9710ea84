import type { BuildOptions, Plugin } from "esbuild";

export declare const ROOT: string;
export declare const EXTENSION_NAME: string;
export declare const NOTICES_FILE: string;
export declare function bundles(bundleDir: string): BuildOptions[];
export declare function buildLayerTree(outDir?: string, options?: { plugins?: Plugin[] }): Promise<number>;
export declare function thirdPartyNotices(inputs: string[], root?: string): Promise<string>;
export declare const MAX_ZIPPED_BYTES: number;
export declare const MAX_UNZIPPED_BYTES: number;
export declare const MAX_WITH_NODE_UNZIPPED_BYTES: number;
export declare function buildAll(options?: { dist?: string; cacheDir?: string }): Promise<{ name: string; zipped: number; unzipped: number }[]>;
export declare const ARTIFACTS: string[];
export declare function archMarker(arch: "x86_64" | "arm64", node: Buffer): string;
export declare function buildCdk(outDir?: string): Promise<void>;
