// An action chunk from the model -> joint positions and velocities fit to publish.
//
// Inputs: actions [H, D] float32 in the model's normalised units; q0 [D] the joint state the
// chunk was computed from; joint [5, D] rows mean, std, lower, upper, max_velocity (limits may
// be +-inf: no limit); dt the time between consecutive actions (s). Output: one float32 buffer
// out = [positions (H*D) | velocities (H*D) | nonfinite (1, int32 bits)], so that one copy
// brings the whole result to the host. The oracle is postprocess_reference in
// flashrt_ros/runtime/kernels.py, which spells out the same rules in torch.
//
// Positions. x = a * std + mean (multiply, then add: two roundings, as torch does), clamped
// to [lower, upper]. A non-finite x (NaN/inf action, or overflow) is replaced by the hold
// position h = clamp(q0, lower, upper), or clamp(0, lower, upper) where q0 itself is not
// finite, so every position written is finite and within limits.
//
// Velocities: the time grid is t_k = (k + 1) * dt for action k, and q0 sits at t = 0 (the
// robot's state when the observation was taken), so the sequence q0, p_0, ..., p_{H-1} is
// sampled every dt. Each velocity is the central difference of its neighbours,
//   v_k = (p_{k+1} - p_{k-1}) / (2 dt),  with p_{-1} = h (the sanitised q0),
// and the last point ends at rest, v_{H-1} = 0. joint_trajectory_controller fits a cubic
// through consecutive (position, velocity) pairs; central differences make that the
// Catmull-Rom spline through the points (C1, no velocity jumps at waypoints, velocities
// consistent with the positions), where one-sided differences or positions alone make it
// overshoot or move in steps. Ending at rest means a chunk that runs out (no newer chunk
// arrived) stops at its last point instead of holding there after a velocity step. Each v_k is
// then clamped to [-max_velocity, max_velocity]; a non-finite v_k (overflow only) becomes 0.
// Positions are not rate-limited here.
//
// nonfinite = #(x not finite) + #(q0 not finite) + #(v before clamping not finite). The host
// must reject (not publish) a chunk whose count is not 0: the sanitised values only make sure
// that no NaN can leave the node through a path that forgets to look.
//
// One block strides over all H * D elements (a chunk is a few thousand floats at most); each
// thread recomputes its neighbours' positions rather than reading them back, so one launch with
// no inter-block ordering does everything, the count included, and nothing needs zeroing first.

// Exponent bits all ones = inf or NaN; a bit test holds under any floating-point compile flags.
__device__ __forceinline__ bool finite(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }

__device__ __forceinline__ float clampf(float x, float lo, float hi) { return fminf(fmaxf(x, lo), hi); }

__device__ __forceinline__ float hold_position(const float* __restrict__ q0,
                                               const float* __restrict__ joint, int dim, int j) {
    const float lo = joint[2 * dim + j];
    const float hi = joint[3 * dim + j];
    const float q = q0[j];
    return clampf(finite(q) ? q : 0.f, lo, hi);
}

// Position of action k of joint j (k == -1: the hold position). `bad` is set when x is not finite.
__device__ __forceinline__ float position(const float* __restrict__ actions,
                                          const float* __restrict__ q0,
                                          const float* __restrict__ joint,
                                          int dim, int k, int j, bool& bad) {
    bad = false;
    if (k < 0) return hold_position(q0, joint, dim, j);
    const float x = __fadd_rn(__fmul_rn(actions[k * dim + j], joint[dim + j]), joint[j]);
    if (!finite(x)) {
        bad = true;
        return hold_position(q0, joint, dim, j);
    }
    return clampf(x, joint[2 * dim + j], joint[3 * dim + j]);
}

extern "C" __global__ void __launch_bounds__(256)
flashrt_postprocess(const float* __restrict__ actions, const float* __restrict__ q0,
                    const float* __restrict__ joint, int horizon, int dim, float dt,
                    float* __restrict__ out) {
    float* __restrict__ positions = out;
    float* __restrict__ velocities = out + horizon * dim;
    int* __restrict__ nonfinite = reinterpret_cast<int*>(out + 2 * horizon * dim);
    __shared__ int count;
    if (threadIdx.x == 0) count = 0;
    __syncthreads();

    int local = 0;
    const float two_dt = 2.f * dt;
    const int n = horizon * dim;
    for (int e = threadIdx.x; e < n; e += blockDim.x) {
        const int k = e / dim;
        const int j = e - k * dim;
        bool bad, unused;
        const float p = position(actions, q0, joint, dim, k, j, bad);
        local += bad ? 1 : 0;
        float v = 0.f;
        if (k < horizon - 1) {
            const float next = position(actions, q0, joint, dim, k + 1, j, unused);
            const float prev = position(actions, q0, joint, dim, k - 1, j, unused);
            const float vmax = joint[4 * dim + j];
            const float raw = __fsub_rn(next, prev) / two_dt;
            if (finite(raw)) {
                v = clampf(raw, -vmax, vmax);
            } else {
                local += 1;
            }
        }
        positions[e] = p;
        velocities[e] = v;
    }
    for (int j = threadIdx.x; j < dim; j += blockDim.x) local += finite(q0[j]) ? 0 : 1;

    if (local) atomicAdd(&count, local);
    __syncthreads();
    if (threadIdx.x == 0) nonfinite[0] = count;
}
