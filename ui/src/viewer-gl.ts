// The stack viewer's pixel pipeline: WebGL2, no library. Each frame is uploaded once as a texture
// of its stored values (R16I signed, R16UI unsigned 16-bit, R8I/R8UI 8-bit, RGB8 colour); the
// fragment shader does the rest per drawn pixel: the stored bits (sign-extended from BitsStored),
// the modality rescale (PS3.3 C.11.1.1.2), bilinear interpolation of the rescaled values (nearest
// while the image changes: scrolling, dragging, cine; bilinear once it rests), the
// linear VOI window (PS3.3 C.11.2.1.2.1) and MONOCHROME1's inversion. Window/level, zoom and pan
// are uniforms: a mouse move re-draws the quad, it never re-uploads or asks the server.
import { frameBytes, type ImageFormat } from "./viewer-data";

const VERTEX = `#version 300 es
in vec2 a_pos;
uniform vec2 u_canvas;  // device pixels
uniform vec2 u_image;   // columns, rows
uniform float u_scale;  // device pixels per image pixel
uniform vec2 u_center;  // where the image's centre is, in device pixels from the top left
out vec2 v_img;
void main() {
  v_img = a_pos * u_image;
  vec2 px = u_center + (a_pos - 0.5) * u_image * u_scale;
  vec2 clip = px / u_canvas * 2.0 - 1.0;
  gl_Position = vec4(clip.x, -clip.y, 0.0, 1.0);
}`;

const HEADER = `#version 300 es
precision highp float;
precision highp int;
precision highp isampler2D;
precision highp usampler2D;
uniform float u_wc;
uniform float u_ww;
uniform bool u_invert;
in vec2 v_img;
out vec4 color;
// PS3.3 C.11.2.1.2.1, the linear VOI function, to 0..1
float voi(float x) {
  if (u_ww <= 1.0) return x > u_wc - 0.5 ? 1.0 : 0.0;
  return clamp((x - (u_wc - 0.5)) / (u_ww - 1.0) + 0.5, 0.0, 1.0);
}
`;

function monochrome(sampler: "isampler2D" | "usampler2D"): string {
  const stored = sampler === "isampler2D"
    ? "int v = texelFetch(u_tex, q, 0).r; int s = 32 - u_bits; v = (v << s) >> s;" // sign-extend BitsStored
    : "uint v = texelFetch(u_tex, q, 0).r & ((1u << uint(u_bits)) - 1u);"; // bits above BitsStored are not the value
  return `${HEADER}
uniform ${sampler} u_tex;
uniform int u_bits;
uniform float u_slope;
uniform float u_intercept;
float value(ivec2 q) {
  q = clamp(q, ivec2(0), textureSize(u_tex, 0) - 1);
  ${stored}
  return float(v) * u_slope + u_intercept;
}
uniform bool u_smooth;
void main() {
  float m;
  if (u_smooth) {  // bilinear, on the rescaled values
    vec2 p = v_img - 0.5;
    vec2 f = fract(p);
    ivec2 i = ivec2(floor(p));
    m = mix(mix(value(i), value(i + ivec2(1, 0)), f.x), mix(value(i + ivec2(0, 1)), value(i + ivec2(1, 1)), f.x), f.y);
  } else {  // nearest: a quarter of the texel fetches, while the image moves
    m = value(ivec2(floor(v_img)));
  }
  float y = voi(m);
  color = vec4(vec3(u_invert ? 1.0 - y : y), 1.0);
}`;
}

const COLOUR = `${HEADER}
uniform sampler2D u_tex;
uniform bool u_ybr;
void main() {
  vec3 c = texture(u_tex, v_img / vec2(textureSize(u_tex, 0))).rgb * 255.0;
  if (u_ybr) {  // PS3.3 C.7.6.3.1.2, YBR_FULL to RGB
    float y = c.r, cb = c.g - 128.0, cr = c.b - 128.0;
    c = vec3(y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb);
  }
  color = vec4(voi(c.r), voi(c.g), voi(c.b), 1.0);
}`;

type Kind = "int" | "uint" | "rgb";

export interface FrameTexture {
  texture: WebGLTexture;
  kind: Kind;
  format: ImageFormat;
  min: number; // rescaled values: the full-range window
  max: number;
}

export interface View {
  center: number; // window centre and width, in rescaled units
  width: number;
  zoom: number; // 1: the image fits the canvas
  panX: number; // CSS pixels
  panY: number;
}

interface Program {
  program: WebGLProgram;
  uniforms: Map<string, WebGLUniformLocation | null>;
}

export class NoWebGL2 extends Error {}

function aligned<T>(data: Uint8Array, bytes: number, make: (b: ArrayBuffer, o: number, n: number) => T, n: number): T {
  const copy = data.byteOffset % bytes === 0 ? data : data.slice(); // a typed view needs an aligned offset
  return make(copy.buffer as ArrayBuffer, copy.byteOffset, n);
}

/** The stored value range (after BitsStored), rescaled: what "Full range" shows. */
function range(values: ArrayLike<number>, f: ImageFormat): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  const shift = 32 - f.bitsStored;
  const mask = f.bitsStored >= 32 ? -1 : (1 << f.bitsStored) - 1;
  for (let i = 0; i < values.length; i++) {
    const v = f.signed ? (values[i] << shift) >> shift : values[i] & mask;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const a = lo * f.slope + f.intercept;
  const b = hi * f.slope + f.intercept;
  return [Math.min(a, b), Math.max(a, b)];
}

export class Renderer {
  private readonly gl: WebGL2RenderingContext;
  private readonly programs: Record<Kind, Program>;

  constructor(private readonly canvas: HTMLCanvasElement) {
    const gl = canvas.getContext("webgl2", { antialias: false, depth: false, stencil: false, alpha: false,
                                            premultipliedAlpha: false, preserveDrawingBuffer: false });
    if (!gl) throw new NoWebGL2("This browser offers no WebGL2: the viewer cannot draw images here.");
    this.gl = gl;
    this.programs = {
      int: this.link(monochrome("isampler2D")), uint: this.link(monochrome("usampler2D")), rgb: this.link(COLOUR),
    };
    const quad = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, quad);
    gl.bufferData(gl.ARRAY_BUFFER, new Float32Array([0, 0, 1, 0, 0, 1, 1, 1]), gl.STATIC_DRAW);
    for (const p of Object.values(this.programs)) {
      const at = gl.getAttribLocation(p.program, "a_pos");
      gl.enableVertexAttribArray(at);
      gl.vertexAttribPointer(at, 2, gl.FLOAT, false, 0, 0);
    }
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
  }

  private link(fragment: string): Program {
    const gl = this.gl;
    const compile = (type: number, source: string) => {
      const shader = gl.createShader(type)!;
      gl.shaderSource(shader, source);
      gl.compileShader(shader);
      if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) throw new Error(`shader: ${gl.getShaderInfoLog(shader)}`);
      return shader;
    };
    const program = gl.createProgram()!;
    gl.attachShader(program, compile(gl.VERTEX_SHADER, VERTEX));
    gl.attachShader(program, compile(gl.FRAGMENT_SHADER, fragment));
    gl.bindAttribLocation(program, 0, "a_pos");
    gl.linkProgram(program);
    if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(`program: ${gl.getProgramInfoLog(program)}`);
    return { program, uniforms: new Map() };
  }

  private uniform(p: Program, name: string): WebGLUniformLocation | null {
    if (!p.uniforms.has(name)) p.uniforms.set(name, this.gl.getUniformLocation(p.program, name));
    return p.uniforms.get(name)!;
  }

  /** One frame's stored values into a texture (once per frame). */
  upload(f: ImageFormat, data: Uint8Array): FrameTexture {
    const gl = this.gl;
    const pixels = f.rows * f.columns;
    const bytes = frameBytes(f);
    if (data.length < bytes) throw new Error(`the frame holds ${data.length} bytes, ${bytes} expected`);
    const texture = gl.createTexture()!;
    gl.bindTexture(gl.TEXTURE_2D, texture);
    let kind: Kind;
    let lo = 0;
    let hi = 255;
    if (f.samples === 3) {
      kind = "rgb";
      let rgb = data.subarray(0, bytes);
      if (f.planar) { // RRR..GGG..BBB.. to RGBRGB.. (PS3.3 C.7.6.3.1.3), once, here
        rgb = new Uint8Array(bytes);
        for (let i = 0; i < pixels; i++) {
          rgb[3 * i] = data[i];
          rgb[3 * i + 1] = data[pixels + i];
          rgb[3 * i + 2] = data[2 * pixels + i];
        }
      }
      gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGB8, f.columns, f.rows, 0, gl.RGB, gl.UNSIGNED_BYTE, rgb);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
    } else {
      kind = f.signed ? "int" : "uint";
      let values: Int16Array | Uint16Array | Int8Array | Uint8Array;
      if (f.bitsAllocated === 16) {
        values = f.signed ? aligned(data, 2, (b, o, n) => new Int16Array(b, o, n), pixels)
          : aligned(data, 2, (b, o, n) => new Uint16Array(b, o, n), pixels);
        gl.texImage2D(gl.TEXTURE_2D, 0, f.signed ? gl.R16I : gl.R16UI, f.columns, f.rows, 0, gl.RED_INTEGER,
                      f.signed ? gl.SHORT : gl.UNSIGNED_SHORT, values);
      } else {
        values = f.signed ? new Int8Array(data.buffer, data.byteOffset, pixels) : data.subarray(0, pixels);
        gl.texImage2D(gl.TEXTURE_2D, 0, f.signed ? gl.R8I : gl.R8UI, f.columns, f.rows, 0, gl.RED_INTEGER,
                      f.signed ? gl.BYTE : gl.UNSIGNED_BYTE, values);
      }
      // integer textures are never filtered: the shader fetches texels and interpolates values
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
      gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
      [lo, hi] = range(values, f);
    }
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    return { texture, kind, format: f, min: lo, max: hi };
  }

  release(t: FrameTexture): void {
    this.gl.deleteTexture(t.texture);
  }

  /** The backing store follows the canvas' CSS size and the device pixel ratio. */
  resize(): void {
    const ratio = devicePixelRatio || 1;
    const w = Math.max(1, Math.round(this.canvas.clientWidth * ratio));
    const h = Math.max(1, Math.round(this.canvas.clientHeight * ratio));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
  }

  /** Device pixels per image pixel at this zoom (1 fits the image in the canvas). */
  scale(t: FrameTexture, zoom: number): number {
    return Math.min(this.canvas.width / t.format.columns, this.canvas.height / t.format.rows) * zoom;
  }

  clear(): void {
    const gl = this.gl;
    this.resize();
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.clearColor(0, 0, 0, 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
  }

  /** ``smooth``: bilinear (at rest); else nearest (a quarter of the work: software GL keeps up). */
  draw(t: FrameTexture, view: View, smooth: boolean): void {
    const gl = this.gl;
    this.clear();
    const p = this.programs[t.kind];
    gl.useProgram(p.program);
    const ratio = devicePixelRatio || 1;
    const f = t.format;
    gl.uniform2f(this.uniform(p, "u_canvas"), this.canvas.width, this.canvas.height);
    gl.uniform2f(this.uniform(p, "u_image"), f.columns, f.rows);
    gl.uniform1f(this.uniform(p, "u_scale"), this.scale(t, view.zoom));
    gl.uniform2f(this.uniform(p, "u_center"), this.canvas.width / 2 + view.panX * ratio, this.canvas.height / 2 + view.panY * ratio);
    gl.uniform1f(this.uniform(p, "u_wc"), view.center);
    gl.uniform1f(this.uniform(p, "u_ww"), view.width);
    gl.uniform1i(this.uniform(p, "u_invert"), f.photometric === "MONOCHROME1" ? 1 : 0);
    if (t.kind === "rgb") {
      gl.uniform1i(this.uniform(p, "u_ybr"), f.photometric === "YBR_FULL" ? 1 : 0);
    } else {
      gl.uniform1i(this.uniform(p, "u_bits"), f.bitsStored);
      gl.uniform1i(this.uniform(p, "u_smooth"), smooth ? 1 : 0);
      gl.uniform1f(this.uniform(p, "u_slope"), f.slope);
      gl.uniform1f(this.uniform(p, "u_intercept"), f.intercept);
    }
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, t.texture);
    gl.uniform1i(this.uniform(p, "u_tex"), 0);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
  }
}
