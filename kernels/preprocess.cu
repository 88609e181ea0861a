// Camera images -> the model's image input, in one launch for all cameras.
//
// For camera i (blockIdx.y) a uint8 HWC image (rgb8, bgr8, rgba8, bgra8 or mono8, rows `step`
// bytes apart: a ROS Image row may carry padding) is resized to S x S with bilinear
// interpolation, put in RGB channel order (bgr swapped, alpha dropped, mono replicated),
// normalised x / 255 * 2 - 1 to [-1, 1] and written CHW to out[i] of a contiguous float32
// [n_cam, 3, S, S] tensor (the model's static input buffer).
//
// Interpolation is torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
// antialias=False) on the image converted to float32, in float32 (the oracle is
// preprocess_reference in flashrt_ros/runtime/kernels.py):
//   scale = in / out;  src = max(scale * (o + 0.5) - 0.5, 0)   (one fused multiply-add, as
//   torch computes it on CPU and CUDA);  i0 = min(floor(src), in - 1);
//   l1 = clamp(src - i0, 0, 1);  i1 = i0 + (i0 < in - 1);  v = (1 - l1) * x[i0] + l1 * x[i1],
// first along x for rows y0 and y1, then along y. No antialiasing: a downscale reads 4 taps.
//
// Per-camera parameters come through a small device array of CamParams, so one compiled
// kernel and one launch serve any mix of sizes and encodings. One thread = one output pixel,
// all three channels; consecutive threads write consecutive floats of each channel plane.
// The host (Preprocessor) validates every parameter; the kernel trusts them.

struct CamParams {
    unsigned long long src;  // device address of the first byte of row 0
    int height;
    int width;
    int step;      // bytes from one row to the next, >= width * channels
    int encoding;  // 0 rgb8, 1 bgr8, 2 rgba8, 3 bgra8, 4 mono8 (ENCODINGS in kernels.py)
};

static_assert(sizeof(CamParams) == 24, "CamParams layout is shared with kernels.py");

__device__ __forceinline__ void source_taps(int dst, int in_size, float scale,
                                            int& i0, int& i1, float& w0, float& w1) {
    float src = __fmaf_rn(scale, (float)dst + 0.5f, -0.5f);
    src = src < 0.f ? 0.f : src;
    i0 = (int)floorf(src);
    i0 = i0 < in_size - 1 ? i0 : in_size - 1;
    float l1 = fminf(fmaxf(src - (float)i0, 0.f), 1.f);
    i1 = i0 + (i0 < in_size - 1 ? 1 : 0);
    w0 = 1.f - l1;
    w1 = l1;
}

extern "C" __global__ void __launch_bounds__(256)
flashrt_preprocess(const CamParams* __restrict__ cams, int size, float* __restrict__ out) {
    const int cam = blockIdx.y;
    const int pixel = blockIdx.x * blockDim.x + threadIdx.x;
    const int plane = size * size;
    if (pixel >= plane) return;
    const int oy = pixel / size;
    const int ox = pixel - oy * size;

    const CamParams p = cams[cam];
    const unsigned char* __restrict__ src = reinterpret_cast<const unsigned char*>(p.src);

    int y0, y1, x0, x1;
    float wy0, wy1, wx0, wx1;
    source_taps(oy, p.height, (float)p.height / (float)size, y0, y1, wy0, wy1);
    source_taps(ox, p.width, (float)p.width / (float)size, x0, x1, wx0, wx1);

    int channels, r, g, b;  // bytes per pixel and the byte of each output channel in a pixel
    switch (p.encoding) {
        case 0: channels = 3; r = 0; g = 1; b = 2; break;  // rgb8
        case 1: channels = 3; r = 2; g = 1; b = 0; break;  // bgr8
        case 2: channels = 4; r = 0; g = 1; b = 2; break;  // rgba8
        case 3: channels = 4; r = 2; g = 1; b = 0; break;  // bgra8
        default: channels = 1; r = 0; g = 0; b = 0; break; // mono8
    }
    const unsigned char* row0 = src + (unsigned long long)y0 * (unsigned long long)p.step;
    const unsigned char* row1 = src + (unsigned long long)y1 * (unsigned long long)p.step;
    const int c0 = x0 * channels;
    const int c1 = x1 * channels;

    float* dst = out + (unsigned long long)cam * 3 * plane + pixel;
    const int byte_of[3] = {r, g, b};
#pragma unroll
    for (int c = 0; c < 3; ++c) {
        const int k = byte_of[c];
        const float top = wx0 * (float)__ldg(row0 + c0 + k) + wx1 * (float)__ldg(row0 + c1 + k);
        const float bottom = wx0 * (float)__ldg(row1 + c0 + k) + wx1 * (float)__ldg(row1 + c1 + k);
        const float v = wy0 * top + wy1 * bottom;
        dst[(unsigned long long)c * plane] = v / 255.f * 2.f - 1.f;
    }
}
