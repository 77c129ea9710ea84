export declare const ROOT: string;
export declare const EXTENSION_NAME: string;
export declare function buildLayerTree(outDir?: string): Promise<number>;
