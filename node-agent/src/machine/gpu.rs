//! NVIDIA GPUs through NVML. The library is loaded at run time: on a machine without an NVIDIA
//! driver `Nvml::init` fails and the agent simply reports no GPU.

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;

use super::{GpuInfo, GpuUsage};

pub(super) struct Gpus {
    nvml: Option<Nvml>,
}

impl Gpus {
    pub(super) fn init() -> Gpus {
        match Nvml::init() {
            Ok(nvml) => Gpus { nvml: Some(nvml) },
            Err(err) => {
                // The normal case on Macs, Linux assembly nodes and AMD/Intel machines.
                tracing::debug!(error = %err, "no NVML (no NVIDIA driver); reporting no GPU");
                Gpus { nvml: None }
            }
        }
    }

    pub(super) fn present(&self) -> bool {
        self.nvml.is_some()
    }

    pub(super) fn info(&self) -> Vec<GpuInfo> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        let driver_version = nvml.sys_driver_version().unwrap_or_default();
        (0..nvml.device_count().unwrap_or(0))
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                Some(GpuInfo {
                    index,
                    name: device.name().unwrap_or_default(),
                    vendor: "NVIDIA".to_owned(),
                    memory_bytes: device.memory_info().map(|m| m.total).unwrap_or(0),
                    driver_version: driver_version.clone(),
                })
            })
            .collect()
    }

    pub(super) fn usage(&self) -> Vec<GpuUsage> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        (0..nvml.device_count().unwrap_or(0))
            .filter_map(|index| {
                let device = nvml.device_by_index(index).ok()?;
                let memory = device.memory_info().ok();
                Some(GpuUsage {
                    index,
                    name: device.name().unwrap_or_default(),
                    utilization_percent: device.utilization_rates().ok().map(|u| f64::from(u.gpu)),
                    memory_used_bytes: memory.as_ref().map_or(0, |m| m.used),
                    memory_total_bytes: memory.as_ref().map_or(0, |m| m.total),
                    temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
                })
            })
            .collect()
    }
}
