//! Command recording: kernel launches, copies and uploads go into one encoder (and one open
//! compute pass) until a flush submits them together.

/// One storage binding: a buffer range.
#[derive(Clone, Copy)]
pub(crate) struct Binding<'a> {
    /// The `@binding` index in group 0 (0 is the uniform parameters).
    pub slot: u32,
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Offset in bytes (a multiple of the adapter's storage offset alignment).
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Size of one uniform slot: the largest alignment adapters ask for uniform offsets.
const SLOT: usize = 256;
/// Bytes of staging per submission (uniforms and small uploads).
const ARENA: usize = 4 << 20;

pub(super) struct Recorder {
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    /// Bytes to write into `arena` just before the next submit.
    staged: Vec<u8>,
    arena: wgpu::Buffer,
}

impl Recorder {
    pub(super) fn new(device: &wgpu::Device) -> Self {
        Recorder {
            encoder: None,
            pass: None,
            staged: Vec::with_capacity(ARENA),
            arena: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("staging arena"),
                size: ARENA as u64,
                usage: wgpu::BufferUsages::UNIFORM
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        }
    }

    fn encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        self.encoder.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("pupil step"),
            })
        })
    }

    fn pass(&mut self, device: &wgpu::Device) -> &mut wgpu::ComputePass<'static> {
        let pass = match self.pass.take() {
            Some(p) => p,
            None => self
                .encoder(device)
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: None,
                })
                .forget_lifetime(),
        };
        self.pass.insert(pass)
    }

    /// Copy `bytes` into the arena at a fresh slot, submitting first if the arena is full.
    fn stage(&mut self, queue: &wgpu::Queue, bytes: &[u8]) -> u64 {
        let mut start = self.staged.len().div_ceil(SLOT) * SLOT;
        if start + bytes.len() > ARENA {
            self.flush(queue);
            start = 0;
        }
        self.staged.resize(start, 0);
        self.staged.extend_from_slice(bytes);
        start as u64
    }

    pub(super) fn dispatch(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        pipeline: &wgpu::ComputePipeline,
        params: &[u8],
        buffers: &[Binding<'_>],
        groups: [u32; 3],
    ) {
        let at = self.stage(queue, params);
        let mut entries = Vec::with_capacity(buffers.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &self.arena,
                offset: at,
                size: wgpu::BufferSize::new(SLOT as u64),
            }),
        });
        for b in buffers {
            entries.push(wgpu::BindGroupEntry {
                binding: b.slot,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.buffer,
                    offset: b.offset,
                    size: wgpu::BufferSize::new(b.size.div_ceil(4) * 4),
                }),
            });
        }
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let pass = self.pass(device);
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }

    pub(super) fn upload(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        dst: &wgpu::Buffer,
        offset: u64,
        data: &[u8],
    ) {
        if data.len() <= ARENA / 4 {
            let at = self.stage(queue, data);
            let len = (data.len() as u64).div_ceil(4) * 4;
            self.staged.resize(at as usize + len as usize, 0);
            let arena = self.arena.clone();
            self.encoder(device)
                .copy_buffer_to_buffer(&arena, at, dst, offset, len);
        } else {
            // Large: submit what is recorded so the direct write cannot overtake it.
            self.flush(queue);
            queue.write_buffer(dst, offset, data);
        }
    }

    pub(super) fn zero(
        &mut self,
        device: &wgpu::Device,
        dst: &wgpu::Buffer,
        offset: u64,
        bytes: u64,
    ) {
        self.encoder(device)
            .clear_buffer(dst, offset, Some(bytes.div_ceil(4) * 4));
    }

    pub(super) fn copy(
        &mut self,
        device: &wgpu::Device,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        self.encoder(device).copy_buffer_to_buffer(
            src,
            src_offset,
            dst,
            dst_offset,
            bytes.div_ceil(4) * 4,
        );
    }

    pub(super) fn flush(&mut self, queue: &wgpu::Queue) {
        self.pass = None;
        if !self.staged.is_empty() {
            self.staged.resize(self.staged.len().div_ceil(4) * 4, 0);
            queue.write_buffer(&self.arena, 0, &self.staged);
            self.staged.clear();
        }
        if let Some(encoder) = self.encoder.take() {
            queue.submit(Some(encoder.finish()));
        }
    }
}
